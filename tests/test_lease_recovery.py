"""A miner that dies mid-job loses its lease; the job is finished by another miner, once."""

import time

import pytest

from aitbc_site.scheduler import start_workers
from jobs.models import Job, JobStatus, Receipt
from miners.models import Miner, MinerStatus

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

LEASE_SECONDS = 2
SWEEP_SECONDS = 1


@pytest.fixture
def housekeeping(settings):
    """The real schedule and Dramatiq workers (stub broker), as the embedded server runs them."""
    settings.JOB_LEASE_SECONDS = LEASE_SECONDS
    settings.HOUSEKEEPING_INTERVAL_SECONDS = SWEEP_SECONDS
    settings.EMBEDDED_WORKER_THREADS = 1
    worker, scheduler = start_workers()
    yield
    scheduler.shutdown(wait=False)
    worker.stop()


def test_job_of_a_silent_miner_is_requeued_and_completed_by_another(
    housekeeping, client_api, make_api, register_miner, submit_job
):
    dead = make_api("miner", "owner-a", miner_id="dies")
    alive = make_api("miner", "owner-b", miner_id="survives")
    register_miner(dead)
    job = submit_job(client_api)
    assert dead.post("/v1/miners/poll", {}, format="json").json()["job_id"] == job["job_id"]
    leased_at = time.monotonic()

    # The dead miner sends nothing more. The sweep re-queues the job once the lease lapses.
    while Job.objects.get(pk=job["job_id"]).status != JobStatus.QUEUED:
        assert time.monotonic() - leased_at < LEASE_SECONDS + SWEEP_SECONDS + 2, "job was not re-queued in time"
        time.sleep(0.05)
    assert Job.objects.get(pk=job["job_id"]).error_code == "LEASE_EXPIRED"

    register_miner(alive)
    second = alive.post("/v1/miners/poll", {}, format="json").json()
    assert second["job_id"] == job["job_id"]
    assert second["attempt"] == 2
    done = alive.post(f"/v1/miners/{job['job_id']}/result", {"result": {"output": "from survivor"}}, format="json")
    assert done.status_code == 200

    late = dead.post(f"/v1/miners/{job['job_id']}/result", {"result": {"output": "late"}}, format="json")
    assert late.status_code == 409
    stored = Job.objects.get(pk=job["job_id"])
    assert stored.result == {"output": "from survivor"}
    assert stored.miner.miner_id == "survives"
    assert Receipt.objects.filter(job=stored).count() == 1


def test_heartbeats_keep_the_lease(housekeeping, client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api)
    job = submit_job(client_api)
    miner_api.post("/v1/miners/poll", {}, format="json")
    deadline = time.monotonic() + LEASE_SECONDS + SWEEP_SECONDS + 1
    while time.monotonic() < deadline:
        assert miner_api.post("/v1/miners/heartbeat", {"inflight": 1}, format="json").status_code == 200
        assert Job.objects.get(pk=job["job_id"]).status == JobStatus.RUNNING
        time.sleep(0.5)
    assert (
        miner_api.post(f"/v1/miners/{job['job_id']}/result", {"result": {"output": "ok"}}, format="json").status_code
        == 200
    )


def test_silent_miner_goes_offline_and_its_jobs_return_at_once(
    settings, client_api, miner_api, register_miner, submit_job
):
    from jobs.services import miners_mark_silent_offline

    settings.MINER_HEARTBEAT_TIMEOUT_SECONDS = 1
    register_miner(miner_api)
    job = submit_job(client_api)
    miner_api.post("/v1/miners/poll", {}, format="json")
    time.sleep(1.2)
    assert miners_mark_silent_offline() == 1
    assert Miner.objects.get().status == MinerStatus.OFFLINE
    stored = Job.objects.get(pk=job["job_id"])
    assert (stored.status, stored.error_code) == (JobStatus.QUEUED, "MINER_OFFLINE")


@pytest.fixture
def result_interrupted(monkeypatch, client_api, miner_api, register_miner, submit_job):
    """Lease a job to ``miner_api``, then post its result with ``between()`` run once after the
    result's read and before its write. Returns ``(job, leased, response)``."""
    from jobs import services

    def post(between):
        register_miner(miner_api)
        job = submit_job(client_api)
        leased = miner_api.post("/v1/miners/poll", {}, format="json").json()
        store, done = services._store_completions, []

        def store_after(*args, **kwargs):
            if not done:
                done.append(between(job))
            return store(*args, **kwargs)

        monkeypatch.setattr(services, "_store_completions", store_after)
        response = miner_api.post(
            f"/v1/miners/{job['job_id']}/result",
            {"result": {"output": "done"}, "lease_token": leased["lease_token"]},
            format="json",
        )
        return job, leased, response

    return post


def test_a_result_for_a_job_re_leased_while_it_is_being_stored_changes_nothing(result_interrupted, miner_api):
    from jobs import services

    def re_leased(job):  # the lease lapses and the next attempt takes the job
        services.job_requeue(job_id=job["job_id"])
        return services.job_claim(miner=Miner.objects.get(owner=miner_api.user))

    second = []
    job, leased, late = result_interrupted(lambda job: second.extend(re_leased(job)))

    assert late.status_code == 409
    stored = Job.objects.get(pk=job["job_id"])
    assert [j.pk for j in second] == [stored.pk]
    assert (stored.status, stored.attempt, stored.result) == (JobStatus.RUNNING, 2, None)
    assert stored.lease_token == second[0].lease_token != leased["lease_token"]
    assert not Receipt.objects.filter(job=stored).exists()


def test_a_job_paid_for_while_its_result_is_being_stored_is_completed_and_settled(result_interrupted, client_api):
    paid = []
    job, _, done = result_interrupted(
        lambda job: paid.append(
            client_api.post("/v1/payments", {"job_id": job["job_id"], "amount": "2"}, format="json")
        )
    )

    assert paid[0].status_code == 201, paid[0].content
    assert done.status_code == 200, done.content
    assert done.json()["receipt"]["price"] == "2"
    stored = client_api.get(f"/v1/jobs/{job['job_id']}").json()
    assert (stored["status"], stored["payment_status"]) == ("completed", "released")
    assert Receipt.objects.filter(job_id=job["job_id"]).count() == 1


def test_a_worker_completing_the_jobs_it_claimed_does_not_read_them_again(
    client_api, miner_api, register_miner, submit_job, django_assert_num_queries
):
    from jobs import services
    from jobs.receipts import client_pseudonym

    register_miner(miner_api)
    job = submit_job(client_api)
    miner = Miner.objects.get()
    (claimed,) = services.job_claim(miner=miner, limit=1)
    outcome = services.Outcome(
        job_id=claimed.pk, result={"output": "done"}, lease_token=claimed.lease_token, job=claimed
    )

    # The completing statement and the client's webhooks looked up (a job that is no workflow's
    # step reads nothing more).
    with django_assert_num_queries(2):
        (done,) = services.jobs_complete(miner=miner, outcomes=[outcome])

    assert done.job is claimed
    assert done.receipt.document["client"] == client_pseudonym(client_api.user.pk)
    assert Job.objects.get(pk=job["job_id"]).status == JobStatus.COMPLETED
    assert Receipt.objects.get(job_id=job["job_id"]).receipt_id == done.receipt.receipt_id


def test_a_claimed_job_handed_back_after_its_lease_passed_on_changes_nothing(
    client_api, miner_api, register_miner, submit_job
):
    from jobs import services

    register_miner(miner_api)
    submit_job(client_api)
    miner = Miner.objects.get()
    (first,) = services.job_claim(miner=miner, limit=1)
    services.job_requeue(job_id=first.pk)
    (second,) = services.job_claim(miner=miner, limit=1)
    outcome = services.Outcome(job_id=first.pk, result={"output": "late"}, lease_token=first.lease_token, job=first)

    assert services.jobs_complete(miner=miner, outcomes=[outcome]) == []
    stored = Job.objects.get(pk=first.pk)
    assert (stored.status, stored.lease_token, stored.result) == (JobStatus.RUNNING, second.lease_token, None)
    assert not Receipt.objects.filter(job=stored).exists()
