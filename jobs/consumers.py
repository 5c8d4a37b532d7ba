import asyncio
import logging
import threading
from contextlib import ExitStack, suppress
from functools import partial
from urllib.parse import parse_qs

from channels.db import database_sync_to_async

from accounts.models import ApiKeyScope
from accounts.services import api_key_authenticate
from core.errors import NotFound, ServiceError
from core.sockets import (
    CLOSE_DONE,
    CLOSE_FORBIDDEN,
    CLOSE_NOT_FOUND,
    CLOSE_UNAUTHENTICATED,
    ClientSocket,
    Credentials,
    socket_credentials,
)
from jobs import events, selectors, wakeup
from jobs.api.miner_serializers import TokensSerializer, leased_job
from jobs.models import JobStatus
from jobs.services import job_claim, job_requeue, job_tokens_relay
from miners import selectors as miner_selectors
from miners import services as miner_services
from miners.models import Miner, ServedModel

logger = logging.getLogger(__name__)


class JobConsumer(ClientSocket):
    """``ws/jobs/<job_id>/``: one job's status changes and generated tokens, as they happen.

    Credentials: an API key in ``X-Api-Key`` or ``Authorization: Bearer``, else in
    ``Sec-WebSocket-Protocol`` (``aitbc.key.<KEY>``, or the bare key as the first subprotocol
    offered; the handshake echoes it, as browsers require), else the session's user. A key that
    is present but invalid is refused, not passed over for the next source. The job's client
    and admins (admin-scope keys, staff users) may subscribe.

    On connect the socket joins the job's group, is accepted and gets a ``job.status`` snapshot
    (the REST JobView), then every ``job.status`` and ``job.token`` event published. Joining
    first means nothing published meanwhile is lost; it may repeat what the snapshot shows.
    Once the job is terminal — in the snapshot or a later event — the server sends that status
    and closes with 1000: clients read until the socket closes.

    Refusals are sent after accepting, so that clients see the code (a handshake refused
    outright reaches them as HTTP 403): 4401 no or invalid credentials; 4403 a key whose scope
    (miner) does not allow this; 4404 no such job, or not yours.

    Client messages are ignored, except ``{"type": "ping"}``, answered ``{"type": "pong"}``.
    """

    job_group: str | None = None
    finished = False

    async def connect(self):
        events.use_server_loop(asyncio.get_running_loop())
        job_id = self.scope["url_route"]["kwargs"]["job_id"]
        credentials = socket_credentials(self.scope)
        user = self.scope.get("user")
        if credentials.raw_key is None and not (user and user.is_authenticated):
            await self._refuse(CLOSE_UNAUTHENTICATED, credentials)
            return
        group = events.job_group(job_id)
        await self.channel_layer.group_add(group, self.channel_name)
        self.job_group = group
        close_code, snapshot = await database_sync_to_async(_subscription)(
            job_id=job_id, raw_key=credentials.raw_key, user=user
        )
        if close_code is not None:
            await self._leave_group()
            await self._refuse(close_code, credentials)
            return
        await self.accept(credentials.subprotocol)
        await self.job_status(snapshot)

    async def disconnect(self, code):
        await self._leave_group()

    async def job_status(self, event):
        if self.finished:
            return
        await self.send_json(event)
        if event["status"] in JobStatus.TERMINAL:
            # Events already queued for this socket arrive after the close: they are dropped.
            self.finished = True
            await self._leave_group()
            await self.close(code=CLOSE_DONE)

    async def job_token(self, event):
        if not self.finished:
            await self.send_json(event)

    async def _refuse(self, code: int, credentials: Credentials) -> None:
        await self.accept(credentials.subprotocol)
        await self.close(code=code)

    async def _leave_group(self) -> None:
        if self.job_group is not None:
            group, self.job_group = self.job_group, None
            await self.channel_layer.group_discard(group, self.channel_name)


def _subscription(*, job_id, raw_key: str | None, user) -> tuple[int | None, dict | None]:
    """``(None, snapshot)`` if the caller may follow the job, else ``(close code, None)``."""
    if raw_key is not None:
        api_key = api_key_authenticate(raw_key=raw_key)
        if api_key is None:
            return CLOSE_UNAUTHENTICATED, None
        user, scope = api_key.user, api_key.scope
    else:
        scope = ApiKeyScope.ADMIN if user.is_staff else ApiKeyScope.CLIENT
    if scope not in (ApiKeyScope.CLIENT, ApiKeyScope.ADMIN):
        return CLOSE_FORBIDDEN, None
    jobs = selectors.jobs_visible_to(user=user, is_admin=scope == ApiKeyScope.ADMIN)
    if scope != ApiKeyScope.ADMIN:
        jobs = jobs.filter(parent__isnull=True)  # a verified job's attempts are followed by staff only
    job = selectors.with_queue_position(jobs).filter(pk=job_id).first()
    if job is None:
        return CLOSE_NOT_FOUND, None
    return None, events.job_status_event(job, outlook=selectors.queue_outlook(jobs=[job]))


# --- ws/miners/ ----------------------------------------------------------------------------

JOB_ASSIGNED = "job.assigned"
JOB_TOKENS = "job.tokens"
TOKENS_REFUSED = "job.tokens.refused"


class MinerConsumer(ClientSocket):
    """``ws/miners/``: work pushed to a miner as soon as there is some, instead of polls.

    Credentials: a miner-scope (or admin) API key, in ``X-Api-Key``, ``Authorization: Bearer`` or
    ``Sec-WebSocket-Protocol`` as for ``ws/jobs/<id>/``; the miner is named by ``X-Miner-ID`` or
    ``?miner_id=`` (default: the key owner's username), as over HTTP. Refusals, sent after
    accepting: 4401 no or invalid key; 4403 another scope, or a browser session without a miner key;
    4404 no such miner of the key's owner.

    On connect, and whenever a job for one of the miner's models is announced, the socket claims
    what the miner may take (``jobs.services.job_claim``: its concurrency limit holds) and sends
    each job as ``{"type": "job.assigned", "job": <the poll response>}``. Results, failures and
    heartbeats still go over HTTP. ``{"type": "ready"}`` asks for a claim now (say, after
    reporting a result, when a queued job was waiting for a free slot); without one the socket
    claims again every ``RECHECK_SECONDS``. ``{"type": "ping"}`` is answered ``{"type": "pong"}``.
    ``{"type": "job.tokens", "tokens": [...]}`` streams output as ``POST /v1/miners/tokens`` does;
    pieces of jobs the miner no longer runs are answered ``{"type": "job.tokens.refused",
    "job_ids": [...]}``, and a malformed message ``{"type": "error", ...}``.

    Wake-ups are those long polls sleep on (``jobs.wakeup``): the socket registers one waiter
    for its miner's models, which wakes the event loop straight from the thread relaying the
    announcement (no thread of its own). That costs nothing on the submit path, reaches every
    server process through PostgreSQL's ``NOTIFY``, covers re-queued jobs too, and wakes one miner
    per announced job rather than every miner of the model. A job claimed as the socket closes is
    put back in the queue at once.

    When the server stops, the socket stops claiming and closes with 4503: the
    miner connects again, reaching another server or this one once it is back.
    """

    RECHECK_SECONDS = 15.0

    miner: Miner | None = None
    pusher: asyncio.Task | None = None
    waiting: ExitStack | None = None

    async def connect(self):
        loop = asyncio.get_running_loop()
        events.use_server_loop(loop)
        credentials = socket_credentials(self.scope)
        close_code, miner, wait_scope = await database_sync_to_async(_speaking_miner)(
            raw_key=credentials.raw_key, miner_id=_named_miner_id(self.scope), user=self.scope.get("user")
        )
        await self.accept(credentials.subprotocol)
        if close_code is not None:
            await self.close(code=close_code)
            return
        self.miner = miner
        self.closing = threading.Event()
        self.wake = asyncio.Event()
        # Registered before the first claim: a job committed in between still wakes us.
        self.waiting = ExitStack()
        self.waiter = self.waiting.enter_context(
            wakeup.hub.waiter(*wait_scope, on_wake=partial(loop.call_soon_threadsafe, self.wake.set))
        )
        self.pusher = loop.create_task(self._push_work())

    async def disconnect(self, code):
        await self._stop_pushing()

    async def close_for_restart(self) -> None:
        await self._stop_pushing()
        await super().close_for_restart()

    async def _stop_pushing(self) -> None:
        if self.pusher is None:
            return
        self.closing.set()
        self.wake.set()
        # A claim in progress finishes (and hands back what it could not deliver) first.
        await asyncio.wait({self.pusher}, timeout=10)
        if self.waiting is not None:
            waiting, self.waiting = self.waiting, None
            waiting.close()  # wake-ups it did not use go to other waiters

    async def on_message(self, content: dict) -> None:
        if content.get("type") == "ready" and self.pusher is not None:
            self.wake.set()
        elif content.get("type") == JOB_TOKENS and self.miner is not None:
            await self._relay_tokens(content)

    async def _relay_tokens(self, content: dict) -> None:
        submitted = TokensSerializer(data=content)
        if not submitted.is_valid():
            await self.send_json({"type": "error", "error_code": "VALIDATION_ERROR", "errors": submitted.errors})
            return
        refused = await database_sync_to_async(job_tokens_relay)(miner=self.miner, pieces=submitted.pieces())
        if refused:
            await self.send_json({"type": TOKENS_REFUSED, "job_ids": sorted(refused)})

    async def _push_work(self) -> None:
        while not self.closing.is_set():
            try:
                jobs = await database_sync_to_async(_claim)(miner=self.miner)
            except Exception:
                logger.exception("claim for miner %s failed", self.miner.miner_id)
                jobs = []
            delivered = 0
            try:
                for job in jobs:
                    if self.closing.is_set():
                        break
                    await self.send_json({"type": JOB_ASSIGNED, "job": leased_job(job)})
                    delivered += 1
            finally:
                if delivered < len(jobs):
                    await database_sync_to_async(_hand_back)(jobs=jobs[delivered:])
            # Wake-ups beyond what we claimed go to the next waiter (another miner may meet
            # constraints this one does not).
            self.waiter.claimed(len(jobs))
            if not jobs:
                self.waiter.pass_on()
            with suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.RECHECK_SECONDS)
            self.wake.clear()


def _named_miner_id(scope) -> str | None:
    headers = dict(scope.get("headers", []))
    if b"x-miner-id" in headers:
        return headers[b"x-miner-id"].decode("latin-1")
    named = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("miner_id")
    return named[0] if named else None


def _speaking_miner(*, raw_key: str | None, miner_id: str | None, user=None) -> tuple[int | None, Miner | None, tuple]:
    """``(None, miner, what it waits for)`` if the key may speak for the miner (the last as
    ``wakeup.miner_wait_scope`` gives it), else ``(close code, None, ())``.

    A browser session is a user, not a miner: it has the wrong scope (4403), as a client key does.
    """
    if raw_key is None:
        signed_in = user is not None and user.is_authenticated
        return (CLOSE_FORBIDDEN if signed_in else CLOSE_UNAUTHENTICATED), None, ()
    api_key = api_key_authenticate(raw_key=raw_key)
    if api_key is None:
        return CLOSE_UNAUTHENTICATED, None, ()
    if api_key.scope not in (ApiKeyScope.MINER, ApiKeyScope.ADMIN):
        return CLOSE_FORBIDDEN, None, ()
    try:
        miner = miner_selectors.miner_for_owner(
            owner=api_key.user, miner_id=miner_id or api_key.user.username, any_owner=api_key.scope == ApiKeyScope.ADMIN
        )
    except NotFound:
        return CLOSE_NOT_FOUND, None, ()
    return None, miner, wakeup.miner_wait_scope(ServedModel.objects.filter(miner=miner).values_list("name", flat=True))


def _claim(*, miner: Miner) -> list:
    miner_services.miner_touch(miner=miner)
    # As many as the miner has free slots: the claim counts its running jobs against its limit.
    return job_claim(miner=miner, limit=miner.max_concurrent_jobs)


def _hand_back(*, jobs: list) -> None:
    for job in jobs:
        with suppress(ServiceError):  # already finished or re-queued otherwise
            job_requeue(job_id=job.pk, reason="The miner's socket closed before the job reached it.")
