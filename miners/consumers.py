import asyncio
import logging
import threading
from contextlib import suppress
from urllib.parse import parse_qs

from channels.db import database_sync_to_async

from accounts.models import ApiKeyScope
from accounts.services import api_key_authenticate
from core.errors import NotFound, ServiceError
from jobs import events, wakeup
from jobs.consumers import CLOSE_FORBIDDEN, CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED, ClientSocket
from jobs.consumers import _credentials as socket_credentials
from jobs.services import job_claim, job_requeue
from miners import selectors, services
from miners.api.serializers import LeasedJobSerializer
from miners.models import Miner, ServedModel

logger = logging.getLogger(__name__)

JOB_ASSIGNED = "job.assigned"


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

    Wake-ups are those long polls sleep on (``jobs.wakeup``): the socket registers one waiter
    for its miner's models, held by a thread of its own that blocks on it and wakes the event
    loop. That costs one sleeping thread per connected miner — as a long poll does — but nothing
    on the submit path, reaches every server process through PostgreSQL's ``NOTIFY``, covers
    re-queued jobs too, and wakes one miner per announced job rather than every miner of the
    model. A job claimed as the socket closes is put back in the queue at once.

    When the server stops, the socket stops claiming and closes with 4503: the
    miner connects again, reaching another server or this one once it is back.
    """

    RECHECK_SECONDS = 15.0
    # How often the waiting thread looks whether its socket has closed.
    THREAD_POLL_SECONDS = 1.0

    miner: Miner | None = None
    pusher: asyncio.Task | None = None

    async def connect(self):
        loop = asyncio.get_running_loop()
        events.use_server_loop(loop)
        credentials = socket_credentials(self.scope)
        close_code, miner, models = await database_sync_to_async(_speaking_miner)(
            raw_key=credentials.raw_key, miner_id=_named_miner_id(self.scope), user=self.scope.get("user")
        )
        await self.accept(credentials.subprotocol)
        if close_code is not None:
            await self.close(code=close_code)
            return
        self.miner = miner
        self.closing = threading.Event()
        self.wake = asyncio.Event()
        self.waiter: wakeup.Waiter | None = None
        registered = asyncio.Event()
        threading.Thread(
            target=self._wait_for_work, args=(loop, models, registered), name="miner-socket", daemon=True
        ).start()
        self.pusher = loop.create_task(self._push_work(registered))

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

    async def on_message(self, content: dict) -> None:
        if content.get("type") == "ready" and self.pusher is not None:
            self.wake.set()

    def _wait_for_work(self, loop: asyncio.AbstractEventLoop, models: list[str], registered: asyncio.Event) -> None:
        """The socket's waiting thread: relays this miner's wake-ups to the event loop."""
        try:
            with wakeup.hub.waiter(models) as waiter:
                self.waiter = waiter
                loop.call_soon_threadsafe(registered.set)
                while not self.closing.is_set():
                    if waiter.wait(self.THREAD_POLL_SECONDS) and not self.closing.is_set():
                        loop.call_soon_threadsafe(self.wake.set)
        except RuntimeError:  # the event loop is gone: so is the socket
            self.closing.set()

    async def _push_work(self, registered: asyncio.Event) -> None:
        # Registered before the first claim: a job committed in between still wakes us.
        await registered.wait()
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
                    await self.send_json({"type": JOB_ASSIGNED, "job": LeasedJobSerializer(job).data})
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


def _speaking_miner(
    *, raw_key: str | None, miner_id: str | None, user=None
) -> tuple[int | None, Miner | None, list[str]]:
    """``(None, miner, its models)`` if the key may speak for the miner, else ``(close code, None, [])``.

    A browser session is a user, not a miner: it has the wrong scope (4403), as a client key does.
    """
    if raw_key is None:
        signed_in = user is not None and user.is_authenticated
        return (CLOSE_FORBIDDEN if signed_in else CLOSE_UNAUTHENTICATED), None, []
    api_key = api_key_authenticate(raw_key=raw_key)
    if api_key is None:
        return CLOSE_UNAUTHENTICATED, None, []
    if api_key.scope not in (ApiKeyScope.MINER, ApiKeyScope.ADMIN):
        return CLOSE_FORBIDDEN, None, []
    try:
        miner = selectors.miner_for_owner(
            owner=api_key.user, miner_id=miner_id or api_key.user.username, any_owner=api_key.scope == ApiKeyScope.ADMIN
        )
    except NotFound:
        return CLOSE_NOT_FOUND, None, []
    return None, miner, list(ServedModel.objects.filter(miner=miner).values_list("name", flat=True))


def _claim(*, miner: Miner) -> list:
    services.miner_touch(miner=miner)
    # As many as the miner has free slots: the claim counts its running jobs against its limit.
    return job_claim(miner=miner, limit=miner.max_concurrent_jobs)


def _hand_back(*, jobs: list) -> None:
    for job in jobs:
        with suppress(ServiceError):  # already finished or re-queued otherwise
            job_requeue(job_id=job.pk, reason="The miner's socket closed before the job reached it.")
