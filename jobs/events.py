"""Live job events for ``ws/jobs/<job_id>/`` subscribers: status changes and generated tokens.

The publishing functions are synchronous and safe to call from any thread: request threads,
worker threads, ``transaction.on_commit`` callbacks. They are best effort: a channel layer that
is down or slow is logged and skipped, never raised, so it cannot break a request or a decoding
step.

Each call is one hop, and nobody waits for it: its messages are handed to one sender per
event loop, which sends every batch after the one before, so events keep the order they were
published in. That loop is the one serving this process's WebSockets where there is one
(consumers register it), so that the in-memory layer of the embedded platform wakes them at
once; else a private loop thread, which keeps its Redis connections between calls. ``flush()``
waits until everything handed over so far has gone out. On the project's Redis layer, a call
from a thread first asks which of its groups have a member (one round trip) and hands over only
their messages: most jobs have no subscriber, and their events then never reach the loop.

A watch in this process (``watch_locally``: an OpenAI-compatible stream) is handed the events
of its groups straight from the send, not through Redis and back: the send leaves its channel
out, so it gets each event once, without two Redis round trips and a receive in between.
"""

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable
from functools import partial

from channels.layers import get_channel_layer

from jobs.api.serializers import job_view
from jobs.models import Job, JobStatus

logger = logging.getLogger(__name__)

JOB_STATUS = "job.status"
JOB_TOKEN = "job.token"
PUBLISH_TIMEOUT_SECONDS = 2.0

_server_loop: tuple[int, asyncio.AbstractEventLoop] | None = None
_private_loop: tuple[int, asyncio.AbstractEventLoop] | None = None
_private_loop_lock = threading.Lock()
_background_tasks: set[asyncio.Task] = set()
# Batches waiting on one loop past this are dropped (logged): a dead layer must not grow memory.
MAX_PENDING_BATCHES = 10_000

# This process's local watches: group → {channel: (the watch's loop, its inbox)}.
_local_watches: dict[str, dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]]] = {}
_local_watches_lock = threading.Lock()


def job_group(job_id) -> str:
    return f"job-{job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))}"


def status_sequence(*, status: str, attempt: int) -> int:
    """Where a job's ``status`` (at ``attempt``) stands in its life, carried by its events as ``sequence``.

    Events of one job are sent by the processes that change it (a request thread queues it, a
    worker elsewhere claims it), so they may arrive out of order; a receiver keeps the highest
    sequence it has seen and ignores an event with a lower one (one with the same sequence is as
    new: it is shown). The figure needs no counter of its own: it is 2 × ``attempt`` plus 1
    running, 2 queued, 3 ended. A claim adds one to ``attempt`` (and nothing takes one off), so
    running after queued is higher; a re-queued job keeps its attempt, higher again; an end is
    higher than the status it ends, and nothing follows an end.
    """
    if status in JobStatus.TERMINAL:
        return 2 * attempt + 3
    return 2 * attempt + (1 if status == JobStatus.RUNNING else 2)


def is_older(event: dict, sequence_seen: int | None) -> bool:
    """Whether ``event`` (one carrying ``sequence``) tells a state older than ``sequence_seen``."""
    sequence = event.get("sequence")
    return sequence is not None and sequence_seen is not None and sequence < sequence_seen


def job_status_event(job: Job, *, outlook: dict | None = None) -> dict:
    """The job as the REST JobView shows it, as a ``job.status`` event, with its ``sequence``
    (``status_sequence``).

    ``type`` is the event's, so the job's type is ``job_type``; the submitted ``payload`` is left
    out (the client has it, and it can be large).
    """
    view = job_view(job, outlook=(outlook or {}).get(job.pk, {}))
    del view["payload"]
    return {
        "type": JOB_STATUS,
        "job_type": view.pop("type"),
        **view,
        "sequence": status_sequence(status=job.status, attempt=job.attempt),
    }


def job_token_event(*, job_id, index: int, text: str, completion_tokens: int, max_tokens: int | None) -> dict:
    progress = min(99, max(0, int(100 * completion_tokens / max_tokens))) if max_tokens else None
    return {"type": JOB_TOKEN, "job_id": str(job_id), "index": index, "text": text, "progress": progress}


def publish_job_status(job: Job) -> None:
    """Send the job's current status to its subscribers. Never raises."""
    publish_job_statuses([job])


def publish_job_statuses(jobs: Iterable[Job]) -> None:
    """Send each job's current status to its subscribers, all in one hop. Never raises.

    Most jobs have no subscriber: an event is built only for a job someone watches, from a copy
    of the job as it is now (the caller may change it later).
    """
    try:
        messages = [(job_group(job.pk), partial(job_status_event, _snapshot(job))) for job in jobs]
    except Exception as error:
        logger.warning("status events not published: %r", error)
        return
    _deliver(messages)


def publish_to_groups(messages: list[tuple[str, dict]]) -> None:
    """Send each ``(group, message)`` to the group's subscribers, off this thread, all in one hop.
    Never raises. Higher apps' live pages use it too (an execution's page, ``ws/executions/<id>/``)."""
    _deliver(messages)


def _snapshot(job: Job) -> Job:
    copy = Job.__new__(Job)
    copy.__dict__.update(job.__dict__)
    return copy


def publish_token_events(events: Iterable) -> None:
    """Send generated tokens to their jobs' subscribers, all in one hop. Never raises.

    Each event is an object with ``key`` (or ``job_id``), ``index``, ``text``,
    ``completion_tokens`` and ``max_tokens`` — an ``inference.engine.TokenEvent`` — or a tuple of
    those five in that order.
    """
    try:
        messages = [_token_message(event) for event in events]
    except Exception as error:
        logger.warning("token events not published: %r", error)
        return
    _deliver(messages)


async def send_token_events(events: Iterable) -> None:
    """``publish_token_events`` from the event loop, returning once they are sent: a watch in
    this process has them before this returns, the channel layer once it does. Never raises."""
    try:
        layer = get_channel_layer()
        if layer is not None:
            await _send_all(layer, [_token_message(event) for event in events])
    except Exception as error:
        logger.warning("token events not published: %r", error)


def use_server_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Publish on ``loop``, the event loop serving this process's WebSockets (consumers call it)."""
    global _server_loop
    _server_loop = (os.getpid(), loop)


def _token_message(event) -> tuple[str, dict]:
    if hasattr(event, "completion_tokens"):
        job_id = getattr(event, "key", None) or event.job_id
        index, text = event.index, event.text
        completion_tokens, max_tokens = event.completion_tokens, event.max_tokens
    else:
        job_id, index, text, completion_tokens, max_tokens = event
    message = job_token_event(
        job_id=job_id, index=index, text=text, completion_tokens=completion_tokens, max_tokens=max_tokens
    )
    return job_group(job_id), message


def _deliver(messages: list[tuple[str, dict]]) -> None:
    if not messages:
        return
    try:
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None:
            # Called from async code: it must not block its own loop, so the send runs as a task.
            task = running.create_task(_send_all(layer, messages))
            _background_tasks.add(task)
            task.add_done_callback(_task_done)
            return
        messages = _watched(layer, messages)
        if messages:
            _sender(_publishing_loop()).submit(layer, messages)
    except Exception as error:
        logger.warning("%d job event(s) not published: %r", len(messages), error)


# After the layer failed to tell which groups are watched, every message goes to the loop this long.
WATCHED_RETRY_SECONDS = 1.0
_watched_retry_at = 0.0


def _watched(layer, messages: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """``messages`` less those of groups nobody watches, where the layer tells so from this thread
    (``groups_with_members``): most jobs have no subscriber, and their events then cost one round
    trip here instead of a hop to the event loop and a script call there. A group joined after
    this look misses what it dropped, as it would have missed it sent a moment earlier: a
    subscriber reads the job's state once it has joined. A group watched in this process keeps
    its messages. When the layer cannot tell, every message goes on."""
    global _watched_retry_at
    check = getattr(layer, "groups_with_members", None)
    if check is None or time.monotonic() < _watched_retry_at:
        return messages
    groups = {group for group, _ in messages}
    with _local_watches_lock:
        watched = {group for group in groups if group in _local_watches}
    try:
        watched |= check(groups - watched)
    except Exception as error:
        _watched_retry_at = time.monotonic() + WATCHED_RETRY_SECONDS
        logger.warning("watched job groups not known, events sent to all: %r", error)
        return messages
    return [message for message in messages if message[0] in watched]


def watch_locally(layer, groups: Iterable[str], channel: str, inbox: asyncio.Queue) -> bool:
    """Have the events this process publishes to ``groups`` put in ``inbox`` (an
    ``asyncio.Queue`` of the running loop) as they are sent, and left out of the layer's send to
    ``channel``, a member of those groups. Only on a layer that can leave a channel out of a
    send (the project's Redis layer); returns whether it did. Events published in other
    processes still reach ``channel`` through the layer. ``unwatch_locally`` ends it."""
    if not hasattr(layer, "group_send_many"):
        return False
    loop = asyncio.get_running_loop()
    with _local_watches_lock:
        for group in groups:
            _local_watches.setdefault(group, {})[channel] = (loop, inbox)
    return True


def unwatch_locally(groups: Iterable[str], channel: str) -> None:
    with _local_watches_lock:
        for group in groups:
            watches = _local_watches.get(group)
            if watches is not None:
                watches.pop(channel, None)
                if not watches:
                    del _local_watches[group]


def _hand_to_local_watches(by_group: dict[str, list]) -> frozenset[str]:
    """Put each group's messages in the inboxes of its local watches (building those given as
    functions, once); return the watches' channels, which the layer's send leaves out."""
    with _local_watches_lock:
        if not _local_watches:
            return frozenset()
        watched = {group: list(_local_watches[group].items()) for group in by_group if group in _local_watches}
    if not watched:
        return frozenset()
    running = asyncio.get_running_loop()
    skipped = set()
    for group, watches in watched.items():
        built = by_group[group] = [message() if callable(message) else message for message in by_group[group]]
        for channel, (loop, inbox) in watches:
            skipped.add(channel)
            if loop is running:
                for message in built:
                    inbox.put_nowait(message)
                continue
            with contextlib.suppress(RuntimeError):  # its loop is closed: so is the watch
                loop.call_soon_threadsafe(_put_all, inbox, built)
    return frozenset(skipped)


def _put_all(inbox: asyncio.Queue, messages: list[dict]) -> None:
    for message in messages:
        inbox.put_nowait(message)


async def _send_all(layer, messages: list[tuple[str, dict]]) -> None:
    by_group: dict[str, list[dict]] = {}
    for group, message in messages:
        by_group.setdefault(group, []).append(message)
    skip = _hand_to_local_watches(by_group) if hasattr(layer, "group_send_many") else frozenset()
    await send_to_groups(layer, by_group, what="job events", skip=skip)


async def send_to_groups(layer, by_group: dict[str, list], *, what: str, skip: frozenset[str] = frozenset()) -> None:
    """Send each watched group its messages in order; a message may be a function that builds
    it. On the project's Redis layer, all of them in two script calls (``group_send_many``),
    leaving out the channels ``skip``; elsewhere, the groups side by side, a group that fails
    logged. A layer that fails as a whole, or a send past the timeout, raises."""
    if hasattr(layer, "group_send_many"):
        async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
            await (layer.group_send_many(by_group, skip=skip) if skip else layer.group_send_many(by_group))
        return

    async def send_in_order(group: str) -> None:
        for message in by_group[group]:
            await layer.group_send(group, message() if callable(message) else message)

    async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
        results = await asyncio.gather(*(send_in_order(group) for group in by_group), return_exceptions=True)
    failures = [result for result in results if isinstance(result, BaseException)]
    if failures:
        logger.warning("%s for %d of %d group(s) not published: %r", what, len(failures), len(by_group), failures[0])


def _task_done(task: asyncio.Task) -> None:
    _background_tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.warning("job events not published: %r", task.exception())


def _publishing_loop() -> asyncio.AbstractEventLoop:
    # A forked child inherits these loops but not the threads that run them.
    pid = os.getpid()
    if _server_loop is not None:
        server_pid, server_loop = _server_loop
        if server_pid == pid and server_loop.is_running() and not server_loop.is_closed():
            return server_loop
    global _private_loop
    with _private_loop_lock:
        if _private_loop is None or _private_loop[0] != pid:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="job-events", daemon=True).start()
            _private_loop = (pid, loop)
        return _private_loop[1]


class _OrderedSender:
    """Sends the batches handed to it on ``loop``, in the order received.

    Batches handed over while a send is under way go out together in the next one: under load,
    one membership lookup serves many batches, and the loop is woken once per send, not once
    per batch.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.pending: collections.deque = collections.deque()
        self.lock = threading.Lock()
        self.running = False  # a drain is scheduled or under way

    def submit(self, layer, messages) -> None:
        """From any thread: queue a batch (returns at once)."""
        self._hand_over((layer, messages))

    def flush(self, timeout: float) -> None:
        """From any thread but the loop's: wait until every batch queued before has been sent."""
        done = concurrent.futures.Future()
        self._hand_over(done)
        done.result(timeout)

    def _hand_over(self, item) -> None:
        with self.lock:
            if len(self.pending) >= MAX_PENDING_BATCHES and not isinstance(item, concurrent.futures.Future):
                logger.warning("job events dropped: %d batches already wait for the channel layer", len(self.pending))
                return
            self.pending.append(item)
            if self.running:
                return
            self.running = True
        self.loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        task = self.loop.create_task(self._drain())
        _background_tasks.add(task)
        task.add_done_callback(_task_done)

    async def _drain(self) -> None:
        while True:
            with self.lock:
                items = list(self.pending)
                self.pending.clear()
                if not items:
                    self.running = False
                    return
            # Consecutive batches for one layer go out as one send; a flush marker waits its turn.
            layer, messages = None, []
            for item in [*items, None]:
                if isinstance(item, tuple) and (layer is None or item[0] is layer):
                    layer = item[0]
                    messages.extend(item[1])
                    continue
                if messages:
                    try:
                        await _send_all(layer, messages)
                    except Exception as error:
                        logger.warning("%d job event(s) not published: %r", len(messages), error)
                layer, messages = (item[0], list(item[1])) if isinstance(item, tuple) else (None, [])
                if isinstance(item, concurrent.futures.Future):
                    item.set_result(None)


_senders: dict[int, _OrderedSender] = {}
_senders_lock = threading.Lock()


def _sender(loop: asyncio.AbstractEventLoop) -> _OrderedSender:
    with _senders_lock:
        sender = _senders.get(id(loop))
        if sender is None or sender.loop is not loop:
            sender = _senders[id(loop)] = _OrderedSender(loop)
        return sender


def flush(timeout: float = PUBLISH_TIMEOUT_SECONDS + 1) -> None:
    """Wait until the events published so far from outside the event loop have been sent."""
    try:
        _sender(_publishing_loop()).flush(timeout)
    except Exception as error:
        logger.warning("job events not flushed: %r", error)
