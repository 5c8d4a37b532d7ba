import uuid
from decimal import Decimal

import pytest
from django.urls import reverse

from jobs.models import Job, JobStatus
from jobs.selectors import miner_earnings
from jobs.services import miner_ban
from miners.models import Miner, MinerStatus
from miners.services import miner_unban
from tests.admin_responses import messages_of

MINERS = reverse("admin:miners_miner_changelist")


def poll(api):
    return api.post("/v1/miners/poll", {"max_wait_seconds": 0}, format="json")


def heartbeat(api):
    return api.post("/v1/miners/heartbeat", {}, format="json")


def register(api):
    return api.post("/v1/miners/register", {"capabilities": {"models": ["llama3.2"]}}, format="json")


@pytest.fixture
def miner(miner_api, register_miner) -> Miner:
    register_miner(miner_api)
    return Miner.objects.get(miner_id="miner-1")


@pytest.fixture
def running_job(miner, client_api, miner_api, submit_job) -> Job:
    job = submit_job(client_api)
    assert poll(miner_api).json()["job_id"] == job["job_id"]
    return Job.objects.get(pk=job["job_id"])


def ban(admin_client, *miners):
    return admin_client.post(
        MINERS,
        {"action": "ban", "_selected_action": [m.pk for m in miners], "apply": "1", "reason": "Fraud report 7"},
        follow=True,
    )


def approve(admin_client, *miners):
    return admin_client.post(MINERS, {"action": "approve", "_selected_action": [m.pk for m in miners]}, follow=True)


# --- Ban and approve -------------------------------------------------------------------


def test_ban_action_takes_the_miner_offline_and_requeues_its_jobs(admin_client, running_job):
    response = ban(admin_client, running_job.miner)
    assert "1 miner(s) banned; 1 job(s) returned to the queue." in messages_of(response)
    miner = Miner.objects.get(pk=running_job.miner_id)
    assert (miner.status, miner.banned_at is not None, miner.banned_by.username) == (MinerStatus.OFFLINE, True, "admin")
    job = Job.objects.get(pk=running_job.pk)
    assert (job.status, job.miner) == (JobStatus.QUEUED, None)


def test_banned_miner_is_told_why_when_it_polls_and_claims_nothing(
    admin_client, miner, miner_api, client_api, submit_job
):
    ban(admin_client, miner)
    job = submit_job(client_api)
    response = poll(miner_api)
    assert (response.status_code, response.json()["error_code"]) == (403, "MINER_BANNED")
    assert "Fraud report 7" in response.json()["detail"]
    assert Miner.objects.get(pk=miner.pk).status == MinerStatus.OFFLINE
    assert Job.objects.get(pk=job["job_id"]).status == JobStatus.QUEUED


def test_banned_miner_cannot_claim_a_specific_job(admin_client, miner, miner_api, client_api, submit_job):
    ban(admin_client, miner)
    job = submit_job(client_api)
    claimed = miner_api.post(f"/v1/jobs/{job['job_id']}/claim", {"miner_id": "miner-1"}, format="json")
    assert (claimed.status_code, claimed.json()["error_code"]) == (403, "MINER_BANNED")
    assert Job.objects.get(pk=job["job_id"]).status == JobStatus.QUEUED


def test_banned_miner_heartbeat_is_refused(admin_client, miner, miner_api):
    ban(admin_client, miner)
    response = heartbeat(miner_api)
    assert (response.status_code, response.json()["error_code"]) == (403, "MINER_BANNED")
    assert Miner.objects.get(pk=miner.pk).status == MinerStatus.OFFLINE


def test_banned_miner_cannot_register_again(admin_client, miner, miner_api):
    ban(admin_client, miner)
    response = register(miner_api)
    assert (response.status_code, response.json()["error_code"]) == (403, "MINER_BANNED")
    assert Miner.objects.get(pk=miner.pk).status == MinerStatus.OFFLINE


def test_approve_action_lifts_the_ban(admin_client, miner, miner_api, client_api, submit_job):
    ban(admin_client, miner)
    response = approve(admin_client, miner)
    assert "1 miner(s) approved." in messages_of(response)
    assert Miner.objects.get(pk=miner.pk).banned_at is None
    assert heartbeat(miner_api).status_code == 200
    job = submit_job(client_api)
    assert poll(miner_api).json()["job_id"] == job["job_id"]


def test_approved_miner_may_register_again(admin_client, miner, miner_api):
    ban(admin_client, miner)
    approve(admin_client, miner)
    assert register(miner_api).status_code == 200
    assert Miner.objects.get(pk=miner.pk).status == MinerStatus.ONLINE


def test_approve_leaves_miners_that_are_not_banned_alone(admin_client, miner):
    assert "0 miner(s) approved." in messages_of(approve(admin_client, miner))


def test_banning_a_banned_miner_again_changes_nothing(admin_client, miner):
    ban(admin_client, miner)
    assert "0 miner(s) banned; 0 job(s) returned to the queue." in messages_of(ban(admin_client, miner))


def test_ban_service_keeps_a_deregistered_miner_deregistered(miner, admin_user):
    miner_api_status = Miner.objects.filter(pk=miner.pk).update(status=MinerStatus.DEREGISTERED)
    assert miner_api_status == 1
    miner_ban(miner=Miner.objects.get(pk=miner.pk), reason="fraud", actor=admin_user)
    assert Miner.objects.get(pk=miner.pk).status == MinerStatus.DEREGISTERED


def test_unban_service_clears_the_reason(miner, admin_user):
    miner_ban(miner=miner, reason="fraud", actor=admin_user)
    miner_unban(miner=miner, actor=admin_user)
    miner = Miner.objects.get(pk=miner.pk)
    assert (miner.banned_at, miner.banned_reason, miner.banned_by) == (None, "", None)


def test_filter_by_banned(admin_client, make_api, register_miner, miner):
    register_miner(make_api("miner", "other", miner_id="rig-2"))
    ban(admin_client, miner)
    response = admin_client.get(MINERS, {"banned": "yes"})
    assert [m.miner_id for m in response.context["cl"].result_list] == ["miner-1"]
    response = admin_client.get(MINERS, {"banned": "no"})
    assert [m.miner_id for m in response.context["cl"].result_list] == ["rig-2"]


# --- Changelist columns ----------------------------------------------------------------


def test_changelist_shows_load_completed_jobs_and_earnings(admin_client, miner, miner_api, client_api, submit_job):
    paid = submit_job(client_api)
    assert client_api.post("/v1/payments", {"job_id": paid["job_id"], "amount": "2"}, format="json").status_code == 201
    assert poll(miner_api).json()["job_id"] == paid["job_id"]
    done = miner_api.post(f"/v1/miners/{paid['job_id']}/result", {"result": {"output": "ok"}}, format="json")
    assert done.status_code == 200, done.content
    submit_job(client_api)
    assert poll(miner_api).status_code == 200
    response = admin_client.get(MINERS)
    [row] = response.context["cl"].result_list
    # 2 AITBC less the 5 % platform fee, as the miner's own earnings page counts it.
    assert (row.running, row.completed, row.earned) == (1, 1, Decimal("1.9"))
    assert row.earned == miner_earnings(miner=row)
    page = response.content.decode()
    assert f"1/{row.max_concurrent_jobs}" in page


def test_changelist_shows_zero_earnings_and_no_reputation_for_a_new_miner(admin_client, miner):
    response = admin_client.get(MINERS)
    [row] = response.context["cl"].result_list
    assert (row.running, row.completed, row.earned, row.reputation) == (0, 0, Decimal(0), None)


def test_changelist_shows_reputation_and_failed_attempts_are_listed(
    admin_client, miner, miner_api, client_api, submit_job
):
    for outcome in ({"result": {"output": "ok"}}, {"result": {"status": "failed", "error": "out of memory"}}):
        job = submit_job(client_api)
        assert poll(miner_api).json()["job_id"] == job["job_id"]
        assert miner_api.post(f"/v1/miners/{job['job_id']}/result", outcome, format="json").status_code == 200
    response = admin_client.get(MINERS)
    [row] = response.context["cl"].result_list
    assert row.reputation == 0.5
    assert "50% (1 done, 1 failed)" in response.content.decode()
    failures = admin_client.get("/admin/jobs/failedattempt/")
    assert [a.job_id for a in failures.context["cl"].result_list] == [uuid.UUID(job["job_id"])]
    job_page = admin_client.get(reverse("admin:jobs_job_change", args=[job["job_id"]]))
    assert "out of memory" in job_page.content.decode()


def test_changelist_query_count_does_not_grow_with_miners(
    admin_client, make_api, register_miner, client_api, submit_job, django_assert_max_num_queries
):
    for n in range(6):
        api = make_api("miner", f"owner-{n}", miner_id=f"rig-{n}")
        register_miner(api)
        submit_job(client_api)
        assert poll(api).status_code == 200
    with django_assert_max_num_queries(8):
        response = admin_client.get(MINERS)
    assert len(response.context["cl"].result_list) == 6
