from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.services import user_get_or_create
from jobs.models import FailedAttempt, Job, JobStatus
from jobs.selectors import REPUTATION_WINDOW, miner_work_summary, with_reputation
from jobs.services import (
    job_claim,
    job_complete,
    job_fail,
    job_requeue,
    job_submit,
    jobs_requeue_lapsed,
    miner_ban,
    miner_deregister,
    miner_take_offline,
    miners_mark_silent_offline,
)
from miners.capabilities import Capabilities
from miners.models import Miner
from miners.services import miner_register

MODEL = "llama3.2"


@pytest.fixture
def client_user(db):
    return user_get_or_create(username="client")


@pytest.fixture
def rig(db):
    miner, _ = miner_register(
        owner=user_get_or_create(username="owner"),
        miner_id="rig-1",
        capabilities=Capabilities(models=(MODEL,), max_concurrent_jobs=10),
    )
    return miner


@pytest.fixture
def claimed(client_user, rig):
    """``claimed()``: a new job, claimed by ``rig``."""

    def claim() -> Job:
        job = job_submit(client=client_user, model=MODEL, payload={"model": MODEL, "prompt": "hi"}).job
        (running,) = job_claim(miner=rig, job_id=job.pk)
        return running

    return claim


def complete(job: Job, miner: Miner) -> None:
    job_complete(job_id=job.pk, miner=miner, result={"text": "ok"}, metrics={}, lease_token=job.lease_token)


def fail(job: Job, miner: Miner, code: str) -> None:
    job_fail(job_id=job.pk, miner=miner, error_code=code, error_message="boom", lease_token=job.lease_token)


def reputation_of(miner: Miner) -> tuple[float | None, int, int]:
    row = with_reputation(Miner.objects.filter(pk=miner.pk)).get()
    return row.reputation, row.recent_completed, row.recent_failed


def test_a_new_miner_has_no_reputation_yet(rig):
    assert reputation_of(rig) == (None, 0, 0)


def test_reputation_is_the_completed_share_of_the_attempts_a_miner_ended(rig, claimed):
    for _ in range(3):
        complete(claimed(), rig)
    job = claimed()
    fail(job, rig, "CUDA_ERROR")
    assert reputation_of(rig) == (0.75, 3, 1)
    (attempt,) = FailedAttempt.objects.all()
    assert (attempt.job_id, attempt.miner_id, attempt.attempt, attempt.error_code) == (job.pk, rig.pk, 1, "CUDA_ERROR")


@pytest.mark.parametrize("code", ["MINER_SHUTDOWN", "REQUEUED", "INVALID_PARAMS", "INPUT_TOO_LONG"])
def test_a_miner_cannot_clear_its_own_failure_by_the_code_it_names(rig, claimed, code):
    complete(claimed(), rig)
    fail(claimed(), rig, code)
    assert reputation_of(rig) == (0.5, 1, 1)
    assert FailedAttempt.objects.get().error_code == code


def test_a_failure_reported_over_http_counts_whatever_its_code(client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api)
    job = submit_job(client_api)
    assert miner_api.post("/v1/miners/poll", {"max_wait_seconds": 0}, format="json").json()["job_id"] == job["job_id"]
    failed = {"result": {"status": "failed", "error_code": "MINER_SHUTDOWN", "error": "going away"}}
    assert miner_api.post(f"/v1/miners/{job['job_id']}/result", failed, format="json").status_code == 200
    attempt = FailedAttempt.objects.get()
    assert (str(attempt.job_id), attempt.miner.miner_id, attempt.error_code) == (
        job["job_id"],
        "miner-1",
        "MINER_SHUTDOWN",
    )


def test_attempts_staff_end_are_not_held_against_the_miner(rig, claimed, admin_user):
    complete(claimed(), rig)
    job_requeue(job_id=claimed().pk, reason="staff")
    claimed()
    miner_take_offline(miner=rig)
    miner_register(owner=rig.owner, miner_id=rig.miner_id, capabilities=Capabilities(models=(MODEL,)))
    claimed()
    miner_ban(miner=rig, reason="testing", actor=admin_user)
    assert reputation_of(rig) == (1.0, 1, 0)
    assert not FailedAttempt.objects.exists()


def test_a_lapsed_lease_counts_against_the_miner(rig, claimed):
    job = claimed()
    jobs_requeue_lapsed(now=timezone.now() + timedelta(days=1))
    assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED
    assert reputation_of(rig) == (0.0, 0, 1)
    assert FailedAttempt.objects.get().error_code == "LEASE_EXPIRED"


def test_jobs_a_miner_holds_when_it_goes_silent_or_deregisters_count_against_it(rig, claimed):
    claimed()
    Miner.objects.filter(pk=rig.pk).update(last_heartbeat_at=timezone.now() - timedelta(days=1))
    assert miners_mark_silent_offline() == 1
    capabilities = Capabilities(models=(MODEL,), max_concurrent_jobs=10)
    miner_register(owner=rig.owner, miner_id=rig.miner_id, capabilities=capabilities)
    claimed()
    claimed()
    miner_deregister(miner=rig)
    assert reputation_of(rig) == (0.0, 0, 3)
    assert set(FailedAttempt.objects.values_list("error_code", flat=True)) == {"MINER_OFFLINE"}


def test_only_the_window_counts(rig, claimed):
    fail(claimed(), rig, "CUDA_ERROR")
    complete(claimed(), rig)
    long_ago = timezone.now() - REPUTATION_WINDOW - timedelta(minutes=1)
    FailedAttempt.objects.update(created_at=long_ago)
    assert reputation_of(rig) == (1.0, 1, 0)
    Job.objects.update(completed_at=long_ago)
    assert reputation_of(rig) == (None, 0, 0)


def test_another_miners_failures_are_not_counted(rig, claimed, client_user):
    other, _ = miner_register(owner=rig.owner, miner_id="rig-2", capabilities=Capabilities(models=(MODEL,)))
    job = job_submit(client=client_user, model=MODEL, payload={"model": MODEL, "prompt": "hi"}).job
    (running,) = job_claim(miner=other, job_id=job.pk)
    fail(running, other, "CUDA_ERROR")
    complete(claimed(), rig)
    assert reputation_of(rig) == (1.0, 1, 0)
    assert reputation_of(other) == (0.0, 0, 1)


def test_work_summary_reports_the_reputation(rig, claimed):
    complete(claimed(), rig)
    fail(claimed(), rig, "CUDA_ERROR")
    assert miner_work_summary(miner=rig)["reputation"] == 0.5
