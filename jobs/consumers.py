import asyncio
import logging
import threading
import time
from collections.abc import Iterable
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from urllib.parse import parse_qs

from channels.db import database_sync_to_async

from accounts.models import ApiKeyScope
from accounts.services import api_key_authenticate
from catalog import payloads
from core.errors import NotFound, ServiceError
from core.sockets import (
    CLOSE_DONE,
    CLOSE_FORBIDDEN,
    CLOSE_NOT_FOUND,
    CLOSE_UNAUTHENTICATED,
    ClientSocket,
    socket_credentials,
)
from jobs import events, matching, selectors, wakeup
from jobs.api.miner_serializers import TokensSerializer, leased_job
from jobs.models import JobStatus
from jobs.services import StreamedText, job_claim, job_requeue, job_tokens_relay
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
    first means nothing published meanwhile is lost; it may repeat what the snapshot shows. A
    ``job.status`` older than one already sent (a lower ``sequence``: see
    ``events.status_sequence``) is not sent.
    Once the job is terminal — in the snapshot or a later event — the server sends that status
    and closes with 1000: clients read until the socket closes.

    Refusals are sent after accepting, so that clients see the code (a handshake refused
    outright reaches them as HTTP 403): 4401 no or invalid credentials; 4403 a key whose scope
    (miner) does not allow this; 4404 no such job, or not yours.

    Client messages are ignored, except ``{"type": "ping"}``, answered ``{"type": "pong"}``.
    """

    finished = False
    sequence_seen: int | None = None

    async def connect(self):
        events.use_server_loop(asyncio.get_running_loop())
        job_id = self.scope["url_route"]["kwargs"]["job_id"]
        credentials = socket_credentials(self.scope)
        user = self.scope.get("user")
        if credentials.raw_key is None and not (user and user.is_authenticated):
            await self.refuse(CLOSE_UNAUTHENTICATED, credentials.subprotocol)
            return
        await self.join_group(events.job_group(job_id))
        close_code, snapshot = await database_sync_to_async(_subscription)(
            job_id=job_id, raw_key=credentials.raw_key, user=user
        )
        if close_code is not None:
            await self.leave_group()
            await self.refuse(close_code, credentials.subprotocol)
            return
        await self.accept(credentials.subprotocol)
        await self.job_status(snapshot)

    async def disconnect(self, code):
        await self.leave_group()

    async def job_status(self, event):
        # Events sent from other processes may arrive after a newer one (or the snapshot).
        if self.finished or events.is_older(event, self.sequence_seen):
            return
        self.sequence_seen = event.get("sequence", self.sequence_seen)
        await self.send_json(event)
        if event["status"] in JobStatus.TERMINAL:
            # Events already queued for this socket arrive after the close: they are dropped.
            self.finished = True
            await self.leave_group()
            await self.close(code=CLOSE_DONE)

    async def job_token(self, event):
        if not self.finished:
            await self.send_json(event)


def socket_client(*, raw_key: str | None, user) -> tuple[int | None, object, bool]:
    """Whom a socket that follows a client's work speaks for: ``(None, user, is_admin)`` for a
    client or admin key (``raw_key``), else for the session's ``user`` (staff as admins); else
    ``(close code, None, False)``."""
    if raw_key is not None:
        api_key = api_key_authenticate(raw_key=raw_key)
        if api_key is None:
            return CLOSE_UNAUTHENTICATED, None, False
        user, scope = api_key.user, api_key.scope
    else:
        scope = ApiKeyScope.ADMIN if user.is_staff else ApiKeyScope.CLIENT
    if scope not in (ApiKeyScope.CLIENT, ApiKeyScope.ADMIN):
        return CLOSE_FORBIDDEN, None, False
    return None, user, scope == ApiKeyScope.ADMIN


def _subscription(*, job_id, raw_key: str | None, user) -> tuple[int | None, dict | None]:
    """``(None, snapshot)`` if the caller may follow the job, else ``(close code, None)``."""
    close_code, user, is_admin = socket_client(raw_key=raw_key, user=user)
    if close_code is not None:
        return close_code, None
    jobs = selectors.jobs_visible_to(user=user, is_admin=is_admin)
    if not is_admin:
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

    A job submitted through this process's OpenAI-compatible views is offered to its sockets
    first (``jobs_offer_to_sockets``): leased by the same claim, to one socket's miner, and handed
    to that socket, without the announcement's round trip.

    The socket remembers the leases it handed its miner: a piece of text for one of them is
    published at once, with no read of the job; a piece naming another lease token than the one
    held is refused. The socket follows the jobs it holds (their groups, as ``ws/jobs/<id>/``
    does): a lease that ended (the job finished, was cancelled or handed to another attempt) is
    dropped when its status event arrives (one older than the lease is not news), and one not
    confirmed for ``LEASE_TRUST_SECONDS`` is checked in the database again, as pieces of any
    other job are, and dropped once the database refuses it.

    ``?mode=tokens`` opens a socket for streamed text only (a miner taking its jobs over HTTP,
    ``runminer``): it claims nothing and holds no lease, so each piece is checked in the database.

    When the server stops, the socket stops claiming and closes with 4503: the
    miner connects again, reaching another server or this one once it is back.
    """

    RECHECK_SECONDS = 15.0
    LEASE_TRUST_SECONDS = 2.0

    miner: Miner | None = None
    pusher: asyncio.Task | None = None
    waiting: ExitStack | None = None
    held: dict[str, "_HeldLease"]
    local_watch = False

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
        self.loop = loop
        self.held = {}
        self.deliveries: set[asyncio.Task] = set()
        if _query_value(self.scope, "mode") == "tokens":
            return
        self.closing = threading.Event()
        self.wake = asyncio.Event()
        # Registered before the first claim: a job committed in between still wakes us.
        self.waiting = ExitStack()
        self.waiter = self.waiting.enter_context(
            wakeup.hub.waiter(*wait_scope, on_wake=partial(loop.call_soon_threadsafe, self.wake.set))
        )
        self.waiting.enter_context(_offered_sockets.listed(self))
        self.pusher = loop.create_task(self._push_work())

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Ended without its disconnect (an error of its own, a cancel): it claims nothing more,
            # and neither wake-ups nor jobs submitted here are handed to it. A claim under way
            # hands back what it took, as at a disconnect.
            self._stop_waiting()

    async def disconnect(self, code):
        await self._stop_pushing()
        await self._forget_leases(list(self.held) if self.miner is not None else [])

    async def close_for_restart(self) -> None:
        await self._stop_pushing()
        await super().close_for_restart()

    async def _stop_pushing(self) -> None:
        if self.pusher is None:
            return
        self._stop_waiting()
        # A claim in progress finishes (and hands back what it could not deliver) first.
        await asyncio.wait({self.pusher, *self.deliveries}, timeout=10)

    def _stop_waiting(self) -> None:
        if self.pusher is None:
            return
        self.closing.set()
        self.wake.set()
        if self.waiting is not None:
            waiting, self.waiting = self.waiting, None
            waiting.close()  # no more offers; wake-ups it did not use go to other waiters

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
        now = time.monotonic()
        relayed, unsure, refused = [], [], set()
        for piece in submitted.pieces():
            held = self.held.get(piece.job_id)
            if held is None or now - held.confirmed_at >= self.LEASE_TRUST_SECONDS:
                unsure.append(piece)
            elif piece.lease_token and piece.lease_token != held.lease_token:
                refused.add(piece.job_id)
            else:
                relayed.append(held.token_event(piece))
        if relayed:
            await events.send_token_events(relayed)
        if unsure:
            checked = await database_sync_to_async(job_tokens_relay)(miner=self.miner, pieces=unsure)
            refused |= checked
            for job_id in {piece.job_id for piece in unsure} - refused:
                if job_id in self.held:
                    self.held[job_id].confirmed_at = now
            # Refused though it names the lease held (or none): the lease is over, whether or not
            # its status event came; leave the job's group now.
            await self._forget_leases(
                list({piece.job_id for piece in unsure if piece.job_id in checked and self._of_held(piece)})
            )
        if refused:
            await self.send_json({"type": TOKENS_REFUSED, "job_ids": sorted(refused)})

    def _of_held(self, piece: StreamedText) -> bool:
        """Whether ``piece`` is of a lease this socket holds, naming its token or none."""
        held = self.held.get(piece.job_id)
        return held is not None and piece.lease_token in (None, "", held.lease_token)

    def offered(self, jobs: list) -> None:
        """From any thread: ``jobs`` were leased to this socket's miner; send them on."""
        try:
            self.loop.call_soon_threadsafe(self._start_delivery, jobs)
        except RuntimeError:  # the loop is closed: so is the socket
            _hand_back(jobs=jobs)

    def _start_delivery(self, jobs: list) -> None:
        delivery = self.loop.create_task(self._deliver(jobs))
        self.deliveries.add(delivery)
        delivery.add_done_callback(self.deliveries.discard)

    async def _deliver(self, jobs: list) -> None:
        """Send the miner the jobs leased to it; hand back those it can no longer get."""
        delivered = 0
        try:
            for job in jobs:
                if self.closing.is_set():
                    break
                self._hold(job)
                await self.send_json({"type": JOB_ASSIGNED, "job": leased_job(job)})
                delivered += 1
        finally:
            if delivered < len(jobs):
                await database_sync_to_async(_hand_back)(jobs=jobs[delivered:])
                for job in jobs[delivered:]:
                    self.held.pop(str(job.pk), None)
        await self._follow_leases([str(job.pk) for job in jobs[:delivered]])

    def _hold(self, job) -> None:
        self.held[str(job.pk)] = _HeldLease(
            lease_token=job.lease_token,
            attempt=job.attempt,
            max_tokens=payloads.requested_max_tokens(job.payload),
            confirmed_at=time.monotonic(),
        )

    async def _follow_leases(self, job_ids: list[str]) -> None:
        """Hear the status events of the jobs held: in this process straight from the publisher
        (``events.watch_locally``), from the others through the jobs' groups."""
        if not job_ids:
            return
        groups = [events.job_group(job_id) for job_id in job_ids]
        self.local_watch = events.watch_locally(self.channel_layer, groups, self.channel_name, _LeaseEvents(self))
        try:
            await asyncio.gather(*(self.channel_layer.group_add(group, self.channel_name) for group in groups))
        except Exception as error:  # the trust period still bounds how long a lease goes unchecked
            logger.warning("job groups of miner %s not joined: %r", self.miner.miner_id, error)

    async def _forget_leases(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            self.held.pop(job_id, None)
        await self._unfollow(job_ids)

    async def _unfollow(self, job_ids: list[str]) -> None:
        """Stop hearing the events of ``job_ids``, but of those held again meanwhile (re-queued,
        then leased to this socket's miner once more)."""
        job_ids = [job_id for job_id in job_ids if job_id not in self.held]
        if not job_ids:
            return
        groups = [events.job_group(job_id) for job_id in job_ids]
        if self.local_watch:
            events.unwatch_locally(groups, self.channel_name)
        results = await asyncio.gather(
            *(self.channel_layer.group_discard(group, self.channel_name) for group in groups), return_exceptions=True
        )
        if any(isinstance(result, BaseException) for result in results):
            logger.warning("job groups of miner %s not left", self.miner.miner_id)

    def lease_event(self, event: dict) -> None:
        """A status event of a job held: a lease that ended is dropped; one sent before the lease
        began (a lower ``sequence``, from a slower process) is not news."""
        if event.get("type") != events.JOB_STATUS:
            return
        held = self.held.get(event.get("job_id"))
        if held is None or events.is_older(
            event, events.status_sequence(status=JobStatus.RUNNING, attempt=held.attempt)
        ):
            return
        if event.get("status") != JobStatus.RUNNING or (event.get("attempt") or 0) != held.attempt:
            self.held.pop(event["job_id"], None)
            task = self.loop.create_task(self._unfollow([event["job_id"]]))
            self.deliveries.add(task)
            task.add_done_callback(self.deliveries.discard)

    async def job_status(self, event):
        self.lease_event(event)

    async def job_token(self, event):
        """Its miner's own text, through a job's group: nothing to do."""

    async def _push_work(self) -> None:
        # A miner below full reputation may claim a job only once it has waited its head start: the
        # first look and each wake-up that found nothing to claim are followed by a look that long after.
        head_start, woken = matching.head_start_seconds(self.miner), True
        while not self.closing.is_set():
            try:
                jobs = await database_sync_to_async(_claim)(miner=self.miner)
            except Exception:
                logger.exception("claim for miner %s failed", self.miner.miner_id)
                jobs = []
            await self._deliver(jobs)
            # Wake-ups beyond what we claimed go to the next waiter (another miner may meet
            # constraints this one does not).
            self.waiter.claimed(len(jobs))
            if not jobs:
                self.waiter.pass_on()
            look_again = woken and not jobs and head_start > 0
            woken = False
            with suppress(TimeoutError):
                async with asyncio.timeout(head_start if look_again else self.RECHECK_SECONDS):
                    await self.wake.wait()
                    woken = True
            self.wake.clear()


@dataclass
class _HeldLease:
    lease_token: str
    attempt: int
    max_tokens: int | None
    confirmed_at: float

    def token_event(self, piece: StreamedText) -> tuple:
        completion_tokens = piece.completion_tokens if piece.completion_tokens is not None else piece.index + 1
        return piece.job_id, piece.index, piece.text, completion_tokens, self.max_tokens


class _LeaseEvents:
    """What ``events.watch_locally`` hands a miner socket: the status events of its jobs."""

    def __init__(self, socket: MinerConsumer):
        self.socket = socket

    def put_nowait(self, event: dict) -> None:
        self.socket.lease_event(event)


class _OfferedSockets:
    """This process's ``ws/miners/`` sockets that claim work, for the jobs submitted here."""

    def __init__(self):
        self._lock = threading.Lock()
        self._sockets: list[MinerConsumer] = []

    @contextmanager
    def listed(self, socket: MinerConsumer):
        with self._lock:
            self._sockets.append(socket)
        try:
            yield
        finally:
            with self._lock:
                self._sockets.remove(socket)

    def serve(self, model: str) -> bool:
        with self._lock:
            return any(socket.waiter.wants(model) for socket in self._sockets)

    def for_model(self, model: str) -> list[MinerConsumer]:
        """The sockets whose miner may run ``model``, those holding the fewest leases first; the
        one chosen goes last among equals next time."""
        with self._lock:
            sockets = [socket for socket in self._sockets if socket.waiter.wants(model)]
            if sockets:
                self._sockets.remove(sockets[0])
                self._sockets.append(sockets[0])
        return sorted(sockets, key=lambda socket: len(socket.held))


_offered_sockets = _OfferedSockets()
OFFER_TRIES = 2


def sockets_serve(model: str) -> bool:
    """Whether a miner connected to this process over ``ws/miners/`` (so online) claims ``model``."""
    return _offered_sockets.serve(model)


@contextmanager
def jobs_offer_to_sockets(model: str, job_ids: Iterable):
    """Around the transaction that queues ``job_ids`` (of ``model``): once it committed, lease
    each job to the miner of one of this process's ``ws/miners/`` sockets (the miner's own claim,
    ``job_claim`` of that job: its matching rules, concurrency limit, lease token and events) and
    hand it to that socket, trying ``OFFER_TRIES`` sockets at most. Meanwhile this process's
    waiters are not woken by the jobs' announcements; a job none of them took is announced to
    them then, and other processes' miners hear of it as usual."""
    sockets = _offered_sockets.for_model(model)
    if not sockets:
        yield
        return
    job_ids = [str(job_id) for job_id in job_ids]
    wakeup.hub.hold_back(job_ids)
    taken: set[str] = set()
    try:
        yield
        for job_id in job_ids:
            for socket in sockets[:OFFER_TRIES]:
                if socket.closing.is_set():
                    continue
                try:
                    leased = job_claim(miner=socket.miner, limit=1, job_id=job_id)
                except Exception:  # the job is queued all the same: the announcement brings a miner
                    logger.exception("offer of job %s to miner %s failed", job_id, socket.miner.miner_id)
                    continue
                if leased:
                    taken.add(job_id)
                    socket.offered(leased)
                    break
    finally:
        wakeup.hub.let_go(job_ids, taken=taken)


def _named_miner_id(scope) -> str | None:
    headers = dict(scope.get("headers", []))
    if b"x-miner-id" in headers:
        return headers[b"x-miner-id"].decode("latin-1")
    return _query_value(scope, "miner_id")


def _query_value(scope, name: str) -> str | None:
    named = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(name)
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
    """Put ``jobs`` back in the queue; never raises (a job not handed back returns when its lease
    expires)."""
    for job in jobs:
        try:
            job_requeue(job_id=job.pk, reason="The miner's socket closed before the job reached it.")
        except ServiceError:  # already finished or re-queued otherwise
            pass
        except Exception:
            logger.exception("job %s not handed back; it returns to the queue when its lease expires", job.pk)
