import logging

import dramatiq
from django.conf import settings

from catalog.selectors import cluster_served_models
from jobs.selectors import models_with_queued_jobs

logger = logging.getLogger(__name__)


@dramatiq.actor(queue_name="inference", time_limit=settings.INFERENCE_DRAIN_TIME_LIMIT_MS, max_retries=0)
def run_inference(model: str) -> None:
    """A wake-up: jobs for ``model`` are waiting. This process's host drains them if it serves it."""
    from inference.worker import current_host

    host = current_host()
    if host is not None:
        host.drain(model)


@dramatiq.actor(queue_name="housekeeping", time_limit=60_000, max_retries=0)
def announce_waiting_models() -> None:
    """Re-send wake-ups for every model with queued jobs: a lost message costs latency, never a job."""
    for model in models_with_queued_jobs(cluster_served_models()):
        announce_to_workers(model)


def announce_to_workers(model: str) -> None:
    """Wake the in-cluster workers serving ``model`` (best effort: housekeeping repeats it)."""
    from inference.worker import worker_queue

    queue = worker_queue(model)
    try:
        broker = dramatiq.get_broker()
        broker.declare_queue(queue)
        broker.enqueue(run_inference.message(model).copy(queue_name=queue))
    except Exception:
        logger.warning("could not announce %s jobs to the workers", model, exc_info=True)


def wake_cluster_workers(model: str) -> None:
    """A job for ``model`` was queued (``jobs.wakeup.on_queued``): wake the in-cluster workers if
    one serves it. HTTP miners hear the database's announcement instead."""
    if model in cluster_served_models():
        announce_to_workers(model)
