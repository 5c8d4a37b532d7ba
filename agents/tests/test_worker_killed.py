"""A worker process killed mid-step (SIGKILL, PostgreSQL): the execution goes on from the database."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from agents import services
from agents.models import Execution, ExecutionStep
from catalog.models import CatalogModel
from jobs.models import Job, JobStatus, Receipt
from jobs.services import Outcome, job_claim, jobs_complete, jobs_requeue_lapsed
from tests.factories import MinerFactory
from tests.processes import current_database_url

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

LEASE_SECONDS = 2

# A worker for the model: it completes the first step (its own process then advances the execution,
# starting the second), leases the second, says so, and hangs there until it is killed.
WORKER = textwrap.dedent(
    """
    import sys, time
    import django
    django.setup()
    from jobs.services import Outcome, job_claim, jobs_complete
    from miners.models import Miner

    miner = Miner.objects.get(miner_id=sys.argv[1])
    (first,) = job_claim(miner=miner, limit=1)
    jobs_complete(miner=miner, outcomes=[Outcome(job_id=first.pk, result={"text": "one"})])
    while not (leased := job_claim(miner=miner, limit=1)):
        time.sleep(0.05)
    print("holding", leased[0].pk, flush=True)
    time.sleep(600)
    """
)


def test_a_worker_killed_mid_step_loses_nothing_and_another_finishes_the_step_once(client_api, settings):
    settings.JOB_LEASE_SECONDS = LEASE_SECONDS
    CatalogModel.objects.create(name="off-engine", task="text-generation", source_kind="hub", source="x/off-engine")
    doomed = MinerFactory(miner_id="doomed", models=("off-engine",))
    survivor = MinerFactory(miner_id="survivor", models=("off-engine",))
    step = {"type": "inference", "model": "off-engine", "params": {"max_tokens": 8}}
    workflow = services.workflow_create(
        owner=client_api.user,
        name="chain",
        steps={"first": {**step, "prompt": "one"}, "second": {**step, "prompt": "after {{steps.first.output}}"}},
        dependencies={"second": ["first"]},
    )
    execution = services.workflow_execute(workflow=workflow, client=client_api.user, inputs={})

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "aitbc_site.settings",
        "DATABASE_URL": current_database_url(),
        "DATABASE_POOL": "false",
        "AITBC_EMBEDDED_WORKERS": "false",
        "JOB_LEASE_SECONDS": str(LEASE_SECONDS),
        "LOG_LEVEL": "WARNING",
    }
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, doomed.miner_id],
        cwd=Path(django_settings.BASE_DIR),
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = worker.stdout.readline()
        assert line.startswith("holding"), line
        held = line.split()[1]
        worker.send_signal(signal.SIGKILL)  # mid-step: its lease held, no result, no goodbye
        assert worker.wait(10) == -signal.SIGKILL
    finally:
        if worker.poll() is None:
            worker.kill()
    second = ExecutionStep.objects.get(execution=execution, step_id="second")
    assert (second.status, str(second.job_id)) == ("running", held)  # started by the dead worker's advance

    # Housekeeping re-queues the lapsed lease; another worker takes the step and finishes it.
    time.sleep(LEASE_SECONDS + 0.5)
    assert jobs_requeue_lapsed() == 1
    (job,) = job_claim(miner=survivor, limit=1)
    assert (str(job.pk), job.attempt) == (held, 2)
    jobs_complete(miner=survivor, outcomes=[Outcome(job_id=job.pk, result={"text": "two"})])

    execution = Execution.objects.get(pk=execution.pk)
    assert (execution.status, execution.final_result) == ("completed", "two")
    assert Job.objects.count() == 2 and set(Job.objects.values_list("status", flat=True)) == {JobStatus.COMPLETED}
    assert sorted(Job.objects.values_list("attempt", flat=True)) == [1, 2]  # the first step ran once
    assert Receipt.objects.values("job").distinct().count() == Receipt.objects.count() == 2
    assert execution.events.filter(kind="queued").count() == 2  # each step started once
