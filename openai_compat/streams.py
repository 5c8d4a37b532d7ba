"""Following a request's jobs from an async view, on the event loop, holding no thread.

The view joins its jobs' channel-layer groups (those ``ws/jobs/<id>/`` sockets join), so it
hears each status change and each piece of text a miner decodes, in-cluster worker or external
miner alike; what its own process publishes it is handed directly (``events.watch_locally``),
without the round trips through Redis. Events are hints: the jobs' rows are read when the
watch starts (a job may end before it subscribed; not for jobs queued after it started), again
every ``RECHECK_SECONDS`` without an event, and whenever a job ends, and an answer is built from
the stored result. So a lost event costs latency, and a lost piece of text only arrives later,
with the end of its choice: a stream never misses text.
"""

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection

from jobs import events
from jobs.models import JobStatus
from openai_compat import selectors

RECHECK_SECONDS = 2.0
LAYER_TIMEOUT_SECONDS = 2.0
# Joining the jobs' groups may take seconds on a busy process (a burst of 200 requests each
# joining at once): waited for, since a watch that gives up streams without events, its pieces
# arriving merged at the end. A layer that is down fails at once.
SUBSCRIBE_TIMEOUT_SECONDS = 10.0
# How long past its last event a job whose row shows it ended is given for its status event and
# the tokens before it: a stream then misses no piece; a lost status event costs this wait.
ROW_GRACE_SECONDS = 2.0

logger = logging.getLogger(__name__)


async def in_thread(function, /, **kwargs):
    """``function(**kwargs)`` on the request's thread, its database connection handed back (to
    the pool) after: a request waiting for its jobs holds no connection."""

    def call():
        try:
            return function(**kwargs)
        finally:
            if not connection.in_atomic_block:
                connection.close()

    return await sync_to_async(call)()


@dataclass(frozen=True)
class Started:
    """A miner took the job."""

    job_id: str


@dataclass(frozen=True)
class Text:
    """Text of the job's output the client has not been sent yet."""

    job_id: str
    text: str


@dataclass(frozen=True)
class Ended:
    job_id: str


@dataclass(frozen=True)
class TimedOut:
    """No miner took the jobs ``waiting`` within the queue timeout (``queued``), or they ran past
    the response timeout."""

    waiting: list[str]
    queued: bool


@dataclass
class StreamedChoice:
    """One job's text as its client was sent it. Pieces join in their index order (those ahead
    of a missing one wait for it); a later attempt of the job, decoding from the start again,
    adds only what goes beyond what was already sent."""

    sent_chars: int = 0
    attempt_text: str = ""
    next_index: int = 0
    early: dict[int, str] = field(default_factory=dict)

    def add(self, index: int, text: str) -> str:
        if index < self.next_index:
            return ""
        self.early[index] = text
        while self.next_index in self.early:
            self.attempt_text += self.early.pop(self.next_index)
            self.next_index += 1
        return self.beyond_sent(self.attempt_text)

    def restart(self) -> None:
        self.attempt_text, self.next_index, self.early = "", 0, {}

    def beyond_sent(self, text: str) -> str:
        new = text[self.sent_chars :]
        self.sent_chars = max(self.sent_chars, len(text))
        return new


class JobWatch:
    """``async with JobWatch(ids, …) as watch: async for update in watch.updates(): …``"""

    def __init__(self, job_ids: list[str], *, queue_timeout: float, response_timeout: float, fresh: bool = False):
        """``fresh``: the watch starts before the jobs are queued, and they are queued once it
        ``joined`` their groups, so nothing happened to them before it hears their events, and
        their rows are first read ``RECHECK_SECONDS`` in."""
        self.job_ids = list(job_ids)
        self.fresh = fresh
        # Set once the jobs' groups are joined, or given up: another process's event sent before
        # that does not reach the watch (the Redis layer sends nothing to a group with no member).
        self.joined = threading.Event()
        if not self.job_ids:
            self.joined.set()
        self.queue_timeout = queue_timeout
        now = time.monotonic()
        self.deadline = now + response_timeout
        self.status = dict.fromkeys(self.job_ids, JobStatus.QUEUED)
        self.attempt = dict.fromkeys(self.job_ids, 0)
        self.sequence = dict.fromkeys(self.job_ids, 0)  # events.status_sequence of the status last taken
        self.queued_since = dict.fromkeys(self.job_ids, now)
        self.choices = {job_id: StreamedChoice() for job_id in self.job_ids}
        self.pending = set(self.job_ids)
        self._ended_in_row: dict[str, float] = {}
        self._last_heard: dict[str, float] = {}
        self._inbox: asyncio.Queue = asyncio.Queue()
        self._layer = None
        self._local = False  # events published in this process are handed over directly
        self._reader: asyncio.Task | None = None
        self._joining: asyncio.Task | None = None

    async def __aenter__(self) -> "JobWatch":
        """Start following the jobs: what this process publishes reaches the watch from now on;
        the jobs' groups, for what other processes publish, are joined meanwhile (``joined`` is
        set then; the first ``updates`` waits for it), so a caller may authenticate while they
        are, and queue the jobs once they are."""
        layer = get_channel_layer()
        if layer is None:
            self.joined.set()
            return self
        # Workers of this process publish on this loop (the in-memory layer wakes no other).
        loop = asyncio.get_running_loop()
        events.use_server_loop(loop)
        groups = [events.job_group(job_id) for job_id in self.job_ids]
        try:
            self._channel = await layer.new_channel()
        except Exception as error:
            self._without_events(error)
            self.joined.set()
            return self
        # What this process publishes comes straight to the inbox, from the first event.
        self._local = events.watch_locally(layer, groups, self._channel, self._inbox)
        self._layer = layer
        self._joining = loop.create_task(self._join(layer, groups))
        self._joining.add_done_callback(lambda _: self.joined.set())
        self._reader = loop.create_task(self._read())
        return self

    async def _join(self, layer, groups: list[str]) -> None:
        async with asyncio.timeout(SUBSCRIBE_TIMEOUT_SECONDS):
            await asyncio.gather(*(layer.group_add(group, self._channel) for group in groups))

    async def _joined(self) -> None:
        joining, self._joining = self._joining, None
        try:
            await joining
        except Exception as error:
            await self.__aexit__(None, None, None)
            self._without_events(error)

    def _without_events(self, error: Exception) -> None:
        # Without events the jobs' rows still tell when they end (every RECHECK_SECONDS).
        logger.warning("following jobs %s without their events: %r", self.job_ids, error)
        self._layer = None

    async def __aexit__(self, *exc_info) -> None:
        if self._joining is not None:
            with contextlib.suppress(Exception):
                await self._joining
            self._joining = None
        if self._reader is None:
            return
        if self._local:
            events.unwatch_locally([events.job_group(job_id) for job_id in self.job_ids], self._channel)
            self._local = False
        reader, self._reader = self._reader, None
        # A receive cancelled drops what its channel buffered: only done once, at the end.
        reader.cancel()
        await asyncio.wait({reader}, timeout=LAYER_TIMEOUT_SECONDS)
        for job_id in self.job_ids:
            try:
                async with asyncio.timeout(LAYER_TIMEOUT_SECONDS):
                    await self._layer.group_discard(events.job_group(job_id), self._channel)
            except Exception as error:  # the group expires by itself
                logger.warning("job group of %s not left: %r", job_id, error)

    async def _read(self) -> None:
        while True:
            self._inbox.put_nowait(await self._layer.receive(self._channel))

    async def updates(self) -> AsyncIterator[Started | Text | Ended | TimedOut]:
        """What happens to the jobs, until all of them ended (or a ``TimedOut``, the last)."""
        if self._joining is not None:
            await self._joined()
        next_check = time.monotonic() + RECHECK_SECONDS if self.fresh and self._layer is not None else 0.0
        while self.pending:
            # What was heard comes first, in its order: a row read later may show the job ended.
            for update in self._heard():
                yield update
            now = time.monotonic()
            if self.pending and now >= next_check:
                states = await in_thread(selectors.job_states, job_ids=sorted(self.pending))
                for update in self._heard():
                    yield update
                recheck = RECHECK_SECONDS
                for job_id, (status, attempt) in states.items():
                    if status in JobStatus.TERMINAL and self._layer is not None:
                        # Its status event follows the job's last tokens: wait for it while the
                        # job's events still arrive (a busy process sends them late), a little
                        # past the last one.
                        since = max(self._ended_in_row.setdefault(job_id, now), self._last_heard.get(job_id, 0.0))
                        if now - since < ROW_GRACE_SECONDS:
                            recheck = min(recheck, since + ROW_GRACE_SECONDS - now)
                            continue
                    for update in self._changed(job_id, status, attempt):
                        yield update
                next_check = time.monotonic() + recheck
                continue
            if not self.pending:
                break
            waiting = [
                job_id
                for job_id in self.job_ids
                if job_id in self.pending
                and self.status[job_id] == JobStatus.QUEUED
                and now - self.queued_since[job_id] >= self.queue_timeout
            ]
            if waiting or now >= self.deadline:
                yield TimedOut(waiting=waiting or sorted(self.pending), queued=bool(waiting))
                return
            wake_at = min(
                next_check,
                self.deadline,
                *(self.queued_since[job_id] + self.queue_timeout for job_id in self.pending
                  if self.status[job_id] == JobStatus.QUEUED),
            )  # fmt: skip
            try:
                async with asyncio.timeout(max(0.0, wake_at - now)):
                    event = await self._inbox.get()
            except TimeoutError:
                continue
            for update in self._on_event(event):
                yield update

    def _heard(self):
        """The updates of the events received and not yet looked at."""
        while not self._inbox.empty():
            yield from self._on_event(self._inbox.get_nowait())

    def _on_event(self, event: dict):
        job_id = event.get("job_id")
        if job_id not in self.pending:
            return
        self._last_heard[job_id] = time.monotonic()
        if event.get("type") == events.JOB_TOKEN:
            if self.status[job_id] == JobStatus.QUEUED:
                self.status[job_id] = JobStatus.RUNNING
                # Running, so claimed at least once: a status sent while it was first queued is older.
                first_run = events.status_sequence(status=JobStatus.RUNNING, attempt=1)
                self.sequence[job_id] = max(self.sequence[job_id], first_run)
                yield Started(job_id)
            text = self.choices[job_id].add(event.get("index", 0), event.get("text") or "")
            if text:
                yield Text(job_id, text)
        elif event.get("type") == events.JOB_STATUS:
            yield from self._changed(job_id, event.get("status"), event.get("attempt") or 0)

    def _changed(self, job_id: str, status: str, attempt: int):
        if job_id not in self.pending:
            return
        sequence = events.status_sequence(status=status, attempt=attempt)
        if sequence < self.sequence[job_id]:
            return  # sent before a change already taken (events come from several processes)
        self.sequence[job_id] = sequence
        previous, known_attempt = self.status[job_id], self.attempt[job_id]
        if attempt > known_attempt:
            if known_attempt:
                self.choices[job_id].restart()  # another attempt decodes from the start
            self.attempt[job_id] = attempt
        self.status[job_id] = status
        if status in JobStatus.TERMINAL:
            self.pending.discard(job_id)
            yield Ended(job_id)
        elif status == JobStatus.RUNNING and previous == JobStatus.QUEUED:
            yield Started(job_id)
        elif status == JobStatus.QUEUED and previous != JobStatus.QUEUED:
            self.queued_since[job_id] = time.monotonic()


def sse(data) -> bytes:
    """One server-sent event: ``data: <JSON>`` (or the text given), and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"data: {text}\n\n".encode()
