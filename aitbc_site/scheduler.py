"""The housekeeping schedule: sends the periodic actors' messages to the broker.

In production it runs in its own process (``manage.py runscheduler``); embedded, it runs
as a thread of the server next to in-process Dramatiq workers on the stub broker. The
actors are idempotent, so a second scheduler only repeats harmless work.
"""

import logging
import threading
from functools import partial

import dramatiq
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from django.conf import settings

from core import shutdown

logger = logging.getLogger(__name__)


def housekeeping_actors() -> list[dramatiq.Actor]:
    from accounts.tasks import purge_ended_sign_ins
    from agents.tasks import advance_executions, assign_waiting_tasks, mark_stale_agents
    from explorer.tasks import seal_block
    from inference.tasks import announce_waiting_models
    from jobs.tasks import (
        decide_stalled_verifications,
        end_verifications_past_ttl,
        expire_queued_jobs,
        mark_silent_miners_offline,
        refresh_miner_reputations,
        requeue_lapsed_leases,
    )
    from payments.tasks import exchange_payments_expire
    from swarm.tasks import advance_swarm_tasks
    from webhooks.tasks import resend_stalled_webhooks

    return [
        expire_queued_jobs,
        requeue_lapsed_leases,
        mark_silent_miners_offline,
        refresh_miner_reputations,
        end_verifications_past_ttl,
        decide_stalled_verifications,
        announce_waiting_models,
        seal_block,
        purge_ended_sign_ins,
        exchange_payments_expire,
        mark_stale_agents,
        assign_waiting_tasks,
        advance_executions,
        advance_swarm_tasks,
        resend_stalled_webhooks,
    ]


def build_scheduler(scheduler_class):
    scheduler = scheduler_class(timezone="UTC")
    for actor in housekeeping_actors():
        scheduler.add_job(
            actor.send,
            "interval",
            seconds=settings.HOUSEKEEPING_INTERVAL_SECONDS,
            id=actor.actor_name,
            max_instances=1,
            coalesce=True,
        )
    return scheduler


def run_blocking() -> None:
    build_scheduler(BlockingScheduler).start()


def start_workers() -> tuple[dramatiq.Worker, BackgroundScheduler]:
    """Dramatiq worker threads on this process's broker plus the schedule, as background threads."""
    housekeeping_actors()
    worker = dramatiq.Worker(dramatiq.get_broker(), worker_threads=settings.EMBEDDED_WORKER_THREADS)
    worker.start()
    scheduler = build_scheduler(BackgroundScheduler)
    scheduler.start()
    return worker, scheduler


_embedded_lock = threading.Lock()
_embedded_started = False


def start_embedded() -> None:
    """In the embedded setup, run the workers and the schedule inside the server, once per process."""
    global _embedded_started
    with _embedded_lock:
        if _embedded_started or not settings.EMBEDDED_WORKERS:
            return
        _embedded_started = True
    worker, scheduler = start_workers()
    shutdown.when_stopping(partial(_stop_embedded, worker, scheduler))
    logger.info(
        "embedded Dramatiq workers (%d threads) and housekeeping schedule started", settings.EMBEDDED_WORKER_THREADS
    )


def _stop_embedded(worker: dramatiq.Worker, scheduler: BackgroundScheduler) -> None:
    """A stopping server stops its workers as ``rundramatiq`` does: the in-cluster host hands its
    running jobs back to the queue (``MINER_SHUTDOWN``, not held against its miner) rather than
    leave them leased to a process that is gone until their leases lapse. In a thread of its own
    (this is called from the event loop), not a daemon: the exit waits for it."""
    scheduler.shutdown(wait=False)
    stop = partial(worker.stop, timeout=int(shutdown.DRAIN_SECONDS * 1000))
    threading.Thread(target=stop, name="embedded-workers-stop").start()
