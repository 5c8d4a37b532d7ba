import pytest
from django.contrib.admin.utils import quote
from django.urls import reverse

from jobs.models import Job, JobStatus, Receipt
from miners.models import Miner, MinerStatus
from tests.admin_responses import listed, messages_of

JOBS = reverse("admin:jobs_job_changelist")
MINERS = reverse("admin:miners_miner_changelist")
RECEIPTS = reverse("admin:jobs_receipt_changelist")


def poll(api):
    return api.post("/v1/miners/poll", {"max_wait_seconds": 0}, format="json")


@pytest.fixture
def running_job(client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api)
    job = submit_job(client_api)
    assert poll(miner_api).json()["job_id"] == job["job_id"]
    return Job.objects.get(pk=job["job_id"])


@pytest.fixture
def receipt(running_job, miner_api):
    done = miner_api.post(f"/v1/miners/{running_job.pk}/result", {"result": {"output": "ok"}}, format="json")
    assert done.status_code == 200, done.content
    return Receipt.objects.get(job=running_job)


# --- Jobs -----------------------------------------------------------------------------


def test_job_changelist_opens(admin_client, client_api, submit_job):
    job = submit_job(client_api)
    assert [str(j.pk) for j in listed(admin_client.get(JOBS))] == [job["job_id"]]


def test_job_change_page_opens(admin_client, running_job):
    response = admin_client.get(reverse("admin:jobs_job_change", args=[running_job.pk]))
    assert response.status_code == 200
    assert "miner-1" in response.content.decode()


def test_job_search_by_model(admin_client, client_api, submit_job):
    submit_job(client_api, model="llama3.2")
    wanted = submit_job(client_api, model="mistral-7b")
    assert [str(j.pk) for j in listed(admin_client.get(JOBS, {"q": "mistral"}))] == [wanted["job_id"]]


def test_job_search_by_exact_id(admin_client, client_api, submit_job):
    submit_job(client_api)
    wanted = submit_job(client_api)
    assert [str(j.pk) for j in listed(admin_client.get(JOBS, {"q": wanted["job_id"]}))] == [wanted["job_id"]]


def test_job_search_by_client_username(admin_client, client_api, other_client_api, submit_job):
    submit_job(client_api)
    bobs = submit_job(other_client_api)
    assert [str(j.pk) for j in listed(admin_client.get(JOBS, {"q": "bob"}))] == [bobs["job_id"]]


def test_job_filter_by_status(admin_client, running_job, client_api, submit_job):
    queued = submit_job(client_api)
    assert [j.pk for j in listed(admin_client.get(JOBS, {"status__exact": "running"}))] == [running_job.pk]
    assert [str(j.pk) for j in listed(admin_client.get(JOBS, {"status__exact": "queued"}))] == [queued["job_id"]]


def test_requeue_action_returns_a_running_job_to_the_queue(admin_client, running_job):
    response = admin_client.post(JOBS, {"action": "requeue_jobs", "_selected_action": [running_job.pk]}, follow=True)
    assert "1 job(s) re-queued." in messages_of(response)
    job = Job.objects.get(pk=running_job.pk)
    assert (job.status, job.miner, job.lease_token) == (JobStatus.QUEUED, None, "")


def test_requeued_job_can_be_claimed_again(admin_client, running_job, miner_api):
    admin_client.post(JOBS, {"action": "requeue_jobs", "_selected_action": [running_job.pk]})
    assert poll(miner_api).json()["job_id"] == str(running_job.pk)


def test_requeue_action_leaves_queued_jobs_alone(admin_client, client_api, submit_job):
    queued = submit_job(client_api)
    response = admin_client.post(JOBS, {"action": "requeue_jobs", "_selected_action": [queued["job_id"]]}, follow=True)
    assert "0 job(s) re-queued." in messages_of(response)
    assert Job.objects.get(pk=queued["job_id"]).status == JobStatus.QUEUED


def test_cancel_action_cancels_a_queued_job(admin_client, client_api, submit_job):
    queued = submit_job(client_api)
    response = admin_client.post(
        JOBS,
        {"action": "cancel_jobs", "_selected_action": [queued["job_id"]], "apply": "1", "reason": "Fraud report 7"},
        follow=True,
    )
    assert "1 job(s) cancelled." in messages_of(response)
    assert client_api.get(f"/v1/jobs/{queued['job_id']}").json()["status"] == "cancelled"


def test_cancel_action_leaves_finished_jobs_alone(admin_client, receipt):
    response = admin_client.post(
        JOBS,
        {"action": "cancel_jobs", "_selected_action": [receipt.job_id], "apply": "1", "reason": "Fraud report 7"},
        follow=True,
    )
    assert "0 job(s) cancelled." in messages_of(response)
    assert Job.objects.get(pk=receipt.job_id).status == JobStatus.COMPLETED


# --- Miners ---------------------------------------------------------------------------


@pytest.fixture
def miners(make_api, register_miner):
    register_miner(make_api("miner", "farm", miner_id="rig-eu"), models=["llama3.2"], region="eu")
    register_miner(make_api("miner", "garage", miner_id="rig-us"), models=["mistral-7b"], region="us")
    return Miner.objects.in_bulk(field_name="miner_id")


def test_miner_changelist_opens(admin_client, miners):
    assert {m.miner_id for m in listed(admin_client.get(MINERS))} == {"rig-eu", "rig-us"}


def test_miner_changelist_counts_running_jobs(admin_client, running_job):
    [miner] = listed(admin_client.get(MINERS))
    assert miner.running == 1


def test_miner_change_page_opens(admin_client, miners):
    response = admin_client.get(reverse("admin:miners_miner_change", args=[miners["rig-eu"].pk]))
    assert response.status_code == 200
    assert "llama3.2" in response.content.decode()


def test_miner_search_by_served_model(admin_client, miners):
    assert [m.miner_id for m in listed(admin_client.get(MINERS, {"q": "mistral"}))] == ["rig-us"]


def test_miner_search_by_owner(admin_client, miners):
    assert [m.miner_id for m in listed(admin_client.get(MINERS, {"q": "farm"}))] == ["rig-eu"]


def test_miner_filter_by_region(admin_client, miners):
    assert [m.miner_id for m in listed(admin_client.get(MINERS, {"region": "us"}))] == ["rig-us"]


def test_miner_filter_by_served_model(admin_client, miners):
    response = admin_client.get(MINERS, {"served_models__name": "llama3.2"})
    assert [m.miner_id for m in listed(response)] == ["rig-eu"]


def test_drained_miner_gets_no_new_job(admin_client, client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api)
    miner = Miner.objects.get(miner_id="miner-1")
    response = admin_client.post(MINERS, {"action": "drain", "_selected_action": [miner.pk]}, follow=True)
    assert "1 miner(s) draining." in messages_of(response)
    submit_job(client_api)
    assert poll(miner_api).status_code == 204


def test_undrained_miner_gets_jobs_again(admin_client, client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api)
    miner = Miner.objects.get(miner_id="miner-1")
    admin_client.post(MINERS, {"action": "drain", "_selected_action": [miner.pk]})
    job = submit_job(client_api)
    assert poll(miner_api).status_code == 204
    response = admin_client.post(MINERS, {"action": "undrain", "_selected_action": [miner.pk]}, follow=True)
    assert "1 miner(s) taking jobs again." in messages_of(response)
    assert poll(miner_api).json()["job_id"] == job["job_id"]


def test_filter_by_draining(admin_client, miners):
    admin_client.post(MINERS, {"action": "drain", "_selected_action": [miners["rig-us"].pk]})
    assert [m.miner_id for m in listed(admin_client.get(MINERS, {"draining__exact": "1"}))] == ["rig-us"]


def test_take_offline_returns_the_miners_running_jobs_to_the_queue(admin_client, running_job):
    response = admin_client.post(
        MINERS, {"action": "take_offline", "_selected_action": [running_job.miner_id]}, follow=True
    )
    assert "Miners taken offline; 1 job(s) returned to the queue." in messages_of(response)
    assert Miner.objects.get(pk=running_job.miner_id).status == MinerStatus.OFFLINE
    job = Job.objects.get(pk=running_job.pk)
    assert (job.status, job.miner) == (JobStatus.QUEUED, None)


# --- Receipts -------------------------------------------------------------------------


def test_receipt_changelist_opens(admin_client, receipt):
    assert [r.pk for r in listed(admin_client.get(RECEIPTS))] == [receipt.pk]


def test_receipt_change_page_shows_the_signed_json(admin_client, receipt):
    # The admin's own links quote primary keys: a receipt id such as ``rcpt_26…`` holds ``_26``,
    # which unquoted reads as ``&``.
    response = admin_client.get(reverse("admin:jobs_receipt_change", args=[quote(receipt.pk)]))
    assert response.status_code == 200
    assert receipt.receipt_id in response.content.decode()
    assert "Ed25519" in response.content.decode()


def test_receipt_search_by_job_id(admin_client, receipt, client_api, miner_api, submit_job):
    other = submit_job(client_api)
    poll(miner_api)
    miner_api.post(f"/v1/miners/{other['job_id']}/result", {"result": {"output": "ok"}}, format="json")
    response = admin_client.get(RECEIPTS, {"q": str(receipt.job_id)})
    assert [r.pk for r in listed(response)] == [receipt.pk]
