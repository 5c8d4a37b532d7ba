"""A Dramatiq worker process killed mid-job: the lease lapses, the job runs again, once."""

import os
import time

import pytest
from django.conf import settings
from django.db import connection

from aitbc_site.testing.processes import DramatiqWorker
from core.errors import Conflict
from inference.tests.conftest import TINY
from inference.worker import ClusterHost
from jobs.models import Job, JobStatus, Receipt
from jobs.services import job_complete, job_submit, jobs_requeue_lapsed
from miners.models import Miner

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def start_worker_process(tmp_path) -> DramatiqWorker:
    database = connection.settings_dict
    env = {
        **os.environ,
        "DEBUG": "true",
        "AITBC_DATA_DIR": str(tmp_path),
        "DATABASE_URL": f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}",
        "DRAMATIQ_BROKER_URL": settings.REDIS_URL or "redis://127.0.0.1:6379/15",
        "INFERENCE_MODELS": TINY,
        "INFERENCE_MINER_ID": "doomed-worker",
        "INFERENCE_HEARTBEAT_SECONDS": "1",
        "JOB_LEASE_SECONDS": "2",
    }
    return DramatiqWorker(env, queues=[f"inference.{TINY}"], threads=1, log_dir=tmp_path).launch()


def test_killed_worker_job_is_reclaimed_after_its_lease_and_completed_once(tiny_model, client_api, settings, tmp_path):
    params = {"max_tokens": 1900, "temperature": 0}
    job = job_submit(
        client=client_api.user, model=TINY, payload={"type": "inference", "prompt": "A miner", "params": params}
    ).job
    worker = start_worker_process(tmp_path)
    try:
        deadline = time.monotonic() + 90
        while Job.objects.get(pk=job.pk).status != JobStatus.RUNNING:
            assert worker.alive, worker.log()
            assert time.monotonic() < deadline, "the worker never claimed the job"
            time.sleep(0.02)
    finally:
        worker.kill()
    dead_attempt = Job.objects.get(pk=job.pk)
    assert dead_attempt.status == JobStatus.RUNNING and dead_attempt.attempt == 1

    time.sleep(2.5)  # the dead worker's lease lapses
    assert jobs_requeue_lapsed() == 1
    settings.MODEL_CACHE_DIR = tmp_path
    rescuer = ClusterHost([TINY], miner_id="rescuer", batch_size=4)
    rescuer.start()
    try:
        rescuer.drain(TINY)  # its listener may have started already: either way the job runs once
        deadline = time.monotonic() + 30
        while Job.objects.get(pk=job.pk).status != JobStatus.COMPLETED and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        rescuer.stop()

    doomed = Miner.objects.get(miner_id="doomed-worker")
    with pytest.raises(Conflict):
        job_complete(job_id=job.pk, miner=doomed, result={"text": "late"}, lease_token=dead_attempt.lease_token)
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED
    assert job.attempt == 2
    assert job.miner.miner_id == "rescuer"
    assert Receipt.objects.filter(job=job).count() == 1
