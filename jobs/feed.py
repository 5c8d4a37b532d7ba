"""The live network feed of ``ws/dashboard/`` (served by ``explorer.consumers``): jobs submitted
and finished, miners coming and going, blocks sealed; plus, to each user's own sockets, every
status change of that user's jobs (``job.updated``, on the group ``user_group(user_id)``), each
with the job's ``sequence`` (``jobs.events.status_sequence``) to put them in order by. The socket
adds the network's figures every few seconds (``network.stats``).

The network feed is shared by every signed-in user, so its events carry only what anyone may
see: ids, models, statuses, block headers — never a payload, prompt or result.

Publishing is cheap because submit and complete run thousands of times a second: the publish
functions build events from the objects in hand (no queries), append them to this process's
buffer and return. The buffer is flushed as one message per group (every group's in one send,
``jobs.events.send_to_groups``) at most every
``FLUSH_INTERVAL_SECONDS`` — at once when the feed has been quiet, so a lone event is not
delayed — on the long-lived loop ``jobs.events`` publishes on. A user's events are coalesced
to the latest per job. At most ``MAX_EVENTS_PER_FLUSH`` go out per group and flush; the oldest
of a larger burst are dropped (a browser cannot show more, ``network.stats`` still counts every
job, and a page told of a change re-reads its list). Like ``jobs.events`` it is best effort: a
channel layer that is down is logged, never raised.
"""

import asyncio
import logging
import os
import threading
import time
from collections.abc import Iterable

from channels.layers import get_channel_layer

from jobs.events import _publishing_loop, is_older, send_to_groups, status_sequence
from jobs.models import Job, JobStatus
from miners.capabilities import AGENT_TASK_MODEL

logger = logging.getLogger(__name__)

DASHBOARD_GROUP = "dashboard"
DASHBOARD_EVENT = "dashboard.event"
# A channel-layer message carrying several feed events; consumers send each as its own frame.
DASHBOARD_BATCH = "dashboard.batch"

JOB_SUBMITTED = "job.submitted"
JOB_FINISHED = "job.finished"
JOB_UPDATED = "job.updated"
MINER_ONLINE = "miner.online"
MINER_OFFLINE = "miner.offline"
BLOCK_SEALED = "block.sealed"
NETWORK_STATS = "network.stats"

FLUSH_INTERVAL_SECONDS = 0.05
MAX_EVENTS_PER_FLUSH = 500


def user_group(user_id) -> str:
    """The group of one user's sockets on ``ws/dashboard/``."""
    return f"user-{int(user_id)}"


def dashboard_event(kind: str, data: dict) -> dict:
    return {"type": DASHBOARD_EVENT, "kind": kind, "data": data}


def job_event(kind: str, job: Job) -> dict:
    data = {"job_id": str(job.pk), "model": job.model, "status": job.status}
    if kind == JOB_UPDATED:  # the owner's alone: the shared feed's events need no order
        data["sequence"] = status_sequence(status=job.status, attempt=job.attempt)
    return dashboard_event(kind, data)


def publish_jobs_submitted(jobs: Iterable[Job]) -> None:
    """Announce newly queued jobs to the network and to their owners. Never raises."""
    _post_built(lambda: [item for job in jobs for item in _submitted(job)])


def publish_jobs_changed(jobs: Iterable[Job]) -> None:
    """Tell each job's owner its new status, and the network about those now terminal. Never raises."""
    _post_built(lambda: [item for job in jobs for item in _changed(job)])


def _submitted(job: Job) -> list[tuple[str, dict]]:
    return [(DASHBOARD_GROUP, job_event(JOB_SUBMITTED, job)), (user_group(job.client_id), job_event(JOB_UPDATED, job))]


def _changed(job: Job) -> list[tuple[str, dict]]:
    # A verified job's attempts are not its client's jobs (it follows the job they answer), but work
    # the network did.
    items = [] if job.parent_id else [(user_group(job.client_id), job_event(JOB_UPDATED, job))]
    if job.status in JobStatus.TERMINAL:
        items.append((DASHBOARD_GROUP, job_event(JOB_FINISHED, job)))
    return items


def _to_all(events: Iterable[dict]) -> list[tuple[str, dict]]:
    return [(DASHBOARD_GROUP, event) for event in events]


def publish_miner_online(miner, *, models: Iterable[str]) -> None:
    """Announce a miner come online; an agent's seat (``AGENT_TASK_MODEL``) is no miner to the feed."""
    models = sorted(models)
    if AGENT_TASK_MODEL in models:
        return
    _post_built(lambda: _to_all([dashboard_event(MINER_ONLINE, {"miner_id": miner.miner_id, "models": models})]))


def publish_miners_offline(miners: Iterable) -> None:
    """Announce miners gone offline or deregistered, with the models they served (one query); agents'
    seats are left out."""

    def build():
        from miners.models import ServedModel

        miners_by_pk = {miner.pk: miner for miner in miners}
        served: dict[int, list[str]] = {pk: [] for pk in miners_by_pk}
        for miner_pk, name in ServedModel.objects.filter(miner__in=list(miners_by_pk)).values_list("miner", "name"):
            served[miner_pk].append(name)
        return _to_all(
            dashboard_event(MINER_OFFLINE, {"miner_id": miner.miner_id, "models": sorted(served[pk])})
            for pk, miner in miners_by_pk.items()
            if AGENT_TASK_MODEL not in served[pk]
        )

    _post_built(build)


def publish_blocks_sealed(blocks: Iterable) -> None:
    _post_built(
        lambda: _to_all(
            dashboard_event(BLOCK_SEALED, {"height": block.height, "hash": block.hash, "tx_count": block.tx_count})
            for block in blocks
        )
    )


def network_stats_event(figures: dict) -> dict:
    """The network's live figures (``explorer.selectors.live_network_figures``) as a feed event."""
    return dashboard_event(NETWORK_STATS, figures)


# --- Delivery ----------------------------------------------------------------------------

# (group, event) in the order published.
_pending: list[tuple[str, dict]] = []
_pending_lock = threading.Lock()
# The loop a flush is scheduled on, if any: a flush lost with its loop (a test's, a stopped
# server's) must not keep later events waiting.
_flush_loop: asyncio.AbstractEventLoop | None = None
_last_flush = 0.0
_background_tasks: set[asyncio.Task] = set()


def _reset_after_fork() -> None:
    global _flush_loop, _last_flush
    _pending.clear()
    _flush_loop, _last_flush = None, 0.0


os.register_at_fork(after_in_child=_reset_after_fork)


def _post_built(build) -> None:
    try:
        _post(build())
    except Exception as error:
        logger.warning("dashboard events not published: %r", error)


def _post(items: list[tuple[str, dict]]) -> None:
    """Queue ``(group, event)`` items for the next flush, scheduling one if none is."""
    global _flush_loop
    if not items:
        return
    with _pending_lock:
        _pending.extend(items)
        if _flush_loop is not None and _flush_loop.is_running():
            return
        loop = _flush_loop = _publishing_loop()
    loop.call_soon_threadsafe(_schedule_flush, loop)


def _schedule_flush(loop: asyncio.AbstractEventLoop) -> None:
    delay = max(0.0, _last_flush + FLUSH_INTERVAL_SECONDS - time.monotonic())
    loop.call_later(delay, _start_flush, loop)


def _start_flush(loop: asyncio.AbstractEventLoop) -> None:
    global _flush_loop, _last_flush
    with _pending_lock:
        items = _pending[:]
        _pending.clear()
        _flush_loop = None
        _last_flush = time.monotonic()
    batches = _by_group(items)
    # The server's loop may have taken over since this flush was scheduled on the private one:
    # the sockets (and an in-memory layer's queues) live on the server's.
    target = _publishing_loop()
    if target is loop:
        _spawn_send(loop, batches)
    else:
        target.call_soon_threadsafe(_spawn_send, target, batches)


def _spawn_send(loop: asyncio.AbstractEventLoop, batches: dict[str, list[dict]]) -> None:
    task = loop.create_task(_send(batches))
    _background_tasks.add(task)
    task.add_done_callback(_background_tasks.discard)


def _by_group(items: list[tuple[str, dict]]) -> dict[str, list[dict]]:
    """Each group's events in order: a user's coalesced to the latest per job (the highest
    ``sequence``: threads of this process may publish a job's changes out of order), and at most
    ``MAX_EVENTS_PER_FLUSH`` (the newest) per group."""
    by_group: dict[str, dict] = {}
    for index, (group, event) in enumerate(items):
        key = event["data"]["job_id"] if event["kind"] == JOB_UPDATED else index
        events = by_group.setdefault(group, {})
        kept = events.pop(key, None)
        if kept is not None and is_older(event["data"], kept["data"].get("sequence")):
            event = kept
        events[key] = event  # the latest goes last
    batches = {}
    for group, events in by_group.items():
        kept = list(events.values())[-MAX_EVENTS_PER_FLUSH:]
        if len(kept) < len(events):
            logger.info("%s feed: %d event(s) of a burst dropped", group, len(events) - len(kept))
        batches[group] = kept
    return batches


async def _send(batches: dict[str, list[dict]]) -> None:
    # One message per group and flush; groups nobody watches (most users') are passed over.
    messages = {
        group: [events[0] if len(events) == 1 else {"type": DASHBOARD_BATCH, "events": events}]
        for group, events in batches.items()
    }
    try:
        layer = get_channel_layer()
        if layer is not None:
            await send_to_groups(layer, messages, what="dashboard events")
    except Exception as error:
        logger.warning("dashboard events for %d group(s) not published: %r", len(batches), error)
