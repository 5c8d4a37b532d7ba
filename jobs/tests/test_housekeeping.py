from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.services import user_get_or_create
from jobs.models import Job, JobPriority, JobStatus
from jobs.services import job_claim, job_submit, jobs_expire_queued, jobs_requeue_lapsed
from jobs.tasks import expire_queued_jobs, requeue_lapsed_leases
from tests.factories import MinerFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def client():
    return user_get_or_create(username="client")


@pytest.fixture
def miner():
    return MinerFactory(owner__username="owner", miner_id="rig", models=("m",), max_concurrent_jobs=50)


def submit(client, **kwargs):
    return job_submit(client=client, model="m", payload={"prompt": "x"}, **kwargs).job


def test_queued_job_past_its_ttl_expires(client):
    job = submit(client, ttl_seconds=60)
    assert jobs_expire_queued(now=timezone.now() + timedelta(seconds=30)) == 0
    assert jobs_expire_queued(now=timezone.now() + timedelta(seconds=61)) == 1
    job.refresh_from_db()
    assert (job.status, job.state, job.error_code) == (JobStatus.EXPIRED, "EXPIRED", "JOB_EXPIRED")


def test_expired_but_unswept_job_is_not_claimed(client, miner):
    job = submit(client, ttl_seconds=1)
    Job.objects.filter(pk=job.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert job_claim(miner=miner) == []


def test_running_jobs_do_not_expire(client, miner):
    job = submit(client, ttl_seconds=1)
    job_claim(miner=miner)
    assert jobs_expire_queued(now=timezone.now() + timedelta(hours=1)) == 0
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING


def test_lapsed_lease_requeues_with_a_fresh_ttl(client, miner, settings):
    job = submit(client, ttl_seconds=60)
    job_claim(miner=miner)
    later = timezone.now() + timedelta(seconds=settings.JOB_LEASE_SECONDS + 1)
    assert jobs_requeue_lapsed(now=later) == 1
    job.refresh_from_db()
    assert (job.status, job.miner_id, job.lease_token, job.error_code) == (JobStatus.QUEUED, None, "", "LEASE_EXPIRED")
    assert job.expires_at > timezone.now() + timedelta(seconds=50)


def test_lapsed_lease_on_the_last_attempt_fails_the_job(client, miner, settings):
    job = submit(client, max_attempts=1)
    job_claim(miner=miner)
    jobs_requeue_lapsed(now=timezone.now() + timedelta(seconds=settings.JOB_LEASE_SECONDS + 1))
    job.refresh_from_db()
    assert (job.status, job.error_code) == (JobStatus.FAILED, "LEASE_EXPIRED")


def test_housekeeping_actors_run_the_sweeps(client, miner):
    expired = submit(client)
    Job.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    lapsed = submit(client)
    job_claim(miner=miner)
    Job.objects.filter(pk=lapsed.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    expire_queued_jobs()
    requeue_lapsed_leases()
    assert Job.objects.get(pk=expired.pk).status == JobStatus.EXPIRED
    assert Job.objects.get(pk=lapsed.pk).status == JobStatus.QUEUED


def test_higher_priority_goes_first(client, miner):
    low = submit(client, priority=JobPriority.LOW)
    urgent = submit(client, priority=JobPriority.URGENT)
    assert [j.pk for j in job_claim(miner=miner, limit=2)] == [urgent.pk, low.pk]


def test_a_long_waiting_job_overtakes_newer_higher_priority_jobs(client, miner, settings):
    old_low = submit(client, priority=JobPriority.LOW)
    # Waited longer than the four levels between low and urgent are worth.
    Job.objects.filter(pk=old_low.pk).update(
        rank_at=old_low.rank_at - timedelta(seconds=5 * settings.JOB_PRIORITY_AGEING_SECONDS)
    )
    submit(client, priority=JobPriority.URGENT)
    assert job_claim(miner=miner)[0].pk == old_low.pk


def test_batch_claim_is_bounded_by_the_miners_free_slots(client, miner):
    for _ in range(60):
        submit(client)
    assert len(job_claim(miner=miner, limit=100)) == 50
    assert job_claim(miner=miner, limit=1) == []


def test_each_claim_gets_a_new_fencing_token(client, miner, settings):
    job = submit(client)
    first = job_claim(miner=miner)[0].lease_token
    jobs_requeue_lapsed(now=timezone.now() + timedelta(seconds=settings.JOB_LEASE_SECONDS + 1))
    second = job_claim(miner=miner)[0]
    assert second.pk == job.pk
    assert second.attempt == 2
    assert first and second.lease_token and second.lease_token != first


def test_staff_requeue_on_the_last_attempt_gives_one_more(client, miner):
    from jobs.services import job_requeue

    job = submit(client, max_attempts=1)
    job_claim(miner=miner)
    job_requeue(job_id=job.pk)
    job.refresh_from_db()
    assert (job.status, job.max_attempts) == (JobStatus.QUEUED, 2)
    assert job_claim(miner=miner)[0].pk == job.pk


@pytest.fixture
def published(monkeypatch):
    """The job statuses sent to WebSocket subscribers, as (job id, status)."""
    sent = []
    monkeypatch.setattr(
        "jobs.events.publish_job_statuses", lambda jobs: sent.extend((str(job.pk), job.status) for job in jobs)
    )
    return sent


def test_expiry_is_published_to_the_jobs_subscribers(client, published, django_capture_on_commit_callbacks):
    job = submit(client, ttl_seconds=60)
    with django_capture_on_commit_callbacks(execute=True):
        jobs_expire_queued(now=timezone.now() + timedelta(seconds=61))
    assert published == [(str(job.pk), JobStatus.EXPIRED)]


def test_lapsed_lease_requeue_is_published(client, miner, published, django_capture_on_commit_callbacks):
    job = submit(client)
    job_claim(miner=miner)
    published.clear()
    with django_capture_on_commit_callbacks(execute=True):
        jobs_requeue_lapsed(now=timezone.now() + timedelta(hours=1))
    assert published == [(str(job.pk), JobStatus.QUEUED)]
