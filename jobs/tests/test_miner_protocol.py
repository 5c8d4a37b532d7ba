import pytest

from jobs.models import Job, JobStatus
from miners.models import Miner, MinerStatus


def poll(api, **body):
    return api.post("/v1/miners/poll", {"max_wait_seconds": 0, **body}, format="json")


def test_heartbeat_of_unregistered_miner_is_404(miner_api):
    response = miner_api.post("/v1/miners/heartbeat", {"inflight": 0}, format="json")
    assert response.status_code == 404
    assert response.json()["error_code"] == "MINER_NOT_FOUND"


def test_heartbeat_ignores_unknown_keys(miner_api, register_miner):
    register_miner(miner_api)
    response = miner_api.post(
        "/v1/miners/heartbeat", {"inflight": 1, "status": "ONLINE", "gpu_util": 93}, format="json"
    )
    assert response.json() == {"status": "ok"}


def test_poll_without_work_is_204(miner_api, register_miner):
    register_miner(miner_api)
    response = poll(miner_api)
    assert response.status_code == 204
    assert response.content == b""


def test_miner_gets_only_models_it_serves(client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api, models=["other"])
    submit_job(client_api, model="llama3.2")
    assert poll(miner_api).status_code == 204


@pytest.mark.parametrize(
    "constraints, capabilities, matches",
    [
        ({"min_vram_gb": 16}, {"gpus": [{"name": "RTX 4090", "memory_mb": 24576}]}, True),
        ({"min_vram_gb": 48}, {"gpus": [{"name": "RTX 4090", "memory_mb": 24576}]}, False),
        ({"gpu": "4090"}, {"gpus": [{"name": "NVIDIA RTX 4090", "memory_mb": 1}]}, True),
        ({"gpu": "H100"}, {"gpus": [{"name": "NVIDIA RTX 4090", "memory_mb": 1}]}, False),
        ({"cuda": "12.1"}, {"cuda": "12.4"}, True),
        ({"cuda": "12.10"}, {"cuda": "12.4"}, False),
        ({"region": "eu-west"}, {"region": "EU-WEST"}, True),
        ({"region": "eu-west"}, {"region": "us-east"}, False),
        ({"max_price": 1}, {"price": 0.5}, True),
        ({"max_price": 0.1}, {"price": 0.5}, False),
    ],
)
def test_constraints_are_matched_against_capabilities(
    client_api, miner_api, register_miner, constraints, capabilities, matches
):
    register_miner(miner_api, models=["llama3.2"], **capabilities)
    response = client_api.post(
        "/v1/jobs", {"prompt": "x", "model": "llama3.2", "constraints": constraints}, format="json"
    )
    assert response.json()["is_possible"] is matches
    assert poll(miner_api).status_code == (200 if matches else 204)


def test_concurrency_limit_per_miner(client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api, max_concurrent_jobs=2)
    for _ in range(3):
        submit_job(client_api)
    assert poll(miner_api).status_code == 200
    assert poll(miner_api, max_jobs=5).json()["jobs"].__len__() == 1
    assert poll(miner_api).status_code == 204


def test_batch_poll_takes_jobs_in_priority_order(client_api, miner_api, register_miner):
    register_miner(miner_api, max_concurrent_jobs=10)
    for priority in ["low", "normal", "urgent", "high", "critical"]:
        client_api.post("/v1/jobs", {"prompt": priority, "model": "llama3.2", "priority": priority}, format="json")
    jobs = poll(miner_api, max_jobs=10).json()["jobs"]
    assert [j["payload"]["prompt"] for j in jobs] == ["urgent", "critical", "high", "normal", "low"]


def test_result_from_a_miner_without_the_lease_is_409_and_changes_nothing(
    client_api, miner_api, make_api, register_miner, submit_job
):
    register_miner(miner_api)
    other = make_api("miner", "other-owner", miner_id="miner-2")
    register_miner(other)
    job = submit_job(client_api)
    leased = poll(miner_api).json()
    response = other.post(f"/v1/miners/{job['job_id']}/result", {"result": {"output": "stolen"}}, format="json")
    assert response.status_code == 409
    assert response.json()["error_code"] == "LEASE_NOT_HELD"
    stored = Job.objects.get(pk=job["job_id"])
    assert stored.status == JobStatus.RUNNING
    assert stored.result is None
    assert stored.lease_token == leased["lease_token"]


def test_result_with_a_stale_lease_token_is_409(client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api)
    job = submit_job(client_api)
    poll(miner_api)
    response = miner_api.post(
        f"/v1/miners/{job['job_id']}/result", {"result": {"output": "x"}, "lease_token": "stale"}, format="json"
    )
    assert response.status_code == 409


def test_second_result_is_409(client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api)
    job = submit_job(client_api)
    poll(miner_api)
    first = miner_api.post(f"/v1/miners/{job['job_id']}/result", {"result": {"output": "a"}}, format="json")
    second = miner_api.post(f"/v1/miners/{job['job_id']}/result", {"result": {"output": "b"}}, format="json")
    assert first.status_code == 200
    assert second.status_code == 409
    assert Job.objects.get(pk=job["job_id"]).result == {"output": "a"}


def test_result_with_failed_status_fails_the_attempt(client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api)
    job = submit_job(client_api)
    poll(miner_api)
    response = miner_api.post(
        f"/v1/miners/{job['job_id']}/result",
        {"result": {"status": "failed", "error": "CUDA out of memory"}},
        format="json",
    )
    assert response.json()["job_status"] == "queued"
    assert response.json()["receipt"] is None
    stored = Job.objects.get(pk=job["job_id"])
    assert (stored.status, stored.error_message, stored.miner_id) == (JobStatus.QUEUED, "CUDA out of memory", None)


def test_job_exhausting_its_attempts_fails_with_its_last_error(client_api, miner_api, register_miner):
    register_miner(miner_api)
    job = client_api.post("/v1/jobs", {"prompt": "x", "model": "llama3.2", "max_attempts": 2}, format="json").json()
    for message in ["first", "second"]:
        assert poll(miner_api).status_code == 200
        response = miner_api.post(
            f"/v1/miners/{job['job_id']}/fail",
            {"error_code": "INFERENCE_FAILED", "error_message": message},
            format="json",
        )
        assert response.json() == {"status": "ok"}
    view = client_api.get(f"/v1/jobs/{job['job_id']}").json()
    assert (view["status"], view["error"], view["error_code"], view["attempt"]) == (
        "failed",
        "second",
        "INFERENCE_FAILED",
        2,
    )
    assert poll(miner_api).status_code == 204


@pytest.mark.parametrize(
    "code", ["INPUT_TOO_LONG", "INVALID_PAYLOAD", "INVALID_PARAMS", "UNSUPPORTED_MODEL", "UNSUPPORTED_TASK"]
)
def test_non_retryable_failure_fails_at_once(client_api, miner_api, register_miner, submit_job, code):
    register_miner(miner_api)
    job = submit_job(client_api)
    poll(miner_api)
    miner_api.post(f"/v1/miners/{job['job_id']}/fail", {"error_code": code}, format="json")
    assert Job.objects.get(pk=job["job_id"]).status == JobStatus.FAILED


def test_cancelled_running_job_rejects_the_result(client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api)
    job = submit_job(client_api)
    poll(miner_api)
    client_api.post(f"/v1/jobs/{job['job_id']}/cancel")
    response = miner_api.post(f"/v1/miners/{job['job_id']}/result", {"result": {"output": "late"}}, format="json")
    assert response.status_code == 409
    assert Job.objects.get(pk=job["job_id"]).status == JobStatus.CANCELLED


def test_legacy_miner_routes(client_api, miner_api, submit_job):
    assert (
        miner_api.post("/v1/miner/register", {"capabilities": {"models": ["llama3.2"]}}, format="json").status_code
        == 200
    )
    assert miner_api.post("/v1/miner/heartbeat", {}, format="json").status_code == 200
    job = submit_job(client_api)
    leased = miner_api.get("/v1/miner/jobs")
    assert leased.json()["job_id"] == job["job_id"]
    done = miner_api.post("/v1/miner/result", {"job_id": job["job_id"], "result": {"output": "ok"}}, format="json")
    assert done.json()["job_status"] == "completed"


def test_tutorial_claim_protocol(client_api, make_api, submit_job):
    api = make_api("miner", "tutorial")
    api.post("/v1/miners/register", {"miner_id": "my-miner-001", "capabilities": ["llama3.2"]}, format="json")
    job = submit_job(client_api)
    available = api.get("/v1/jobs/available?miner_id=my-miner-001").json()
    assert [j["job_id"] for j in available["items"]] == [job["job_id"]]
    claimed = api.post(f"/v1/jobs/{job['job_id']}/claim", {"miner_id": "my-miner-001"}, format="json")
    assert claimed.status_code == 200
    assert api.post(f"/v1/jobs/{job['job_id']}/claim", {"miner_id": "my-miner-001"}, format="json").status_code == 409
    done = api.post(
        f"/v1/jobs/{job['job_id']}/complete",
        {"miner_id": "my-miner-001", "result": "The generated output...", "completed_at": "2026-01-24T15:00:05Z"},
        format="json",
    )
    assert done.status_code == 200
    assert client_api.get(f"/v1/jobs/{job['job_id']}").json()["result"] == "The generated output..."


def test_miner_jobs_earnings_capabilities_and_deregister(client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api)
    job = submit_job(client_api)
    poll(miner_api)
    miner_api.post(
        f"/v1/miners/{job['job_id']}/result", {"result": {"output": "x"}, "metrics": {"units": 7}}, format="json"
    )
    assert miner_api.post("/v1/miners/miner-1/jobs").json()["total"] == 1
    earnings = miner_api.post("/v1/miners/miner-1/earnings").json()
    assert (earnings["jobs_completed"], earnings["units_served"], earnings["reputation"]) == (1, 7, 1.0)
    updated = miner_api.put("/v1/miners/miner-1/capabilities", {"capabilities": {"models": ["new"]}}, format="json")
    assert updated.json()["models"] == ["new"]
    assert miner_api.delete("/v1/miners/miner-1").json() == {"status": "ok"}
    assert Miner.objects.get().status == MinerStatus.DEREGISTERED
    assert miner_api.post("/v1/miners/heartbeat", {}, format="json").status_code == 404


def test_deregistering_returns_held_jobs_to_the_queue(client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api)
    job = submit_job(client_api)
    poll(miner_api)
    miner_api.delete("/v1/miners/miner-1")
    assert Job.objects.get(pk=job["job_id"]).status == JobStatus.QUEUED


def test_another_owners_miner_is_404(miner_api, make_api, register_miner):
    register_miner(miner_api)
    stranger = make_api("miner", "stranger")
    assert stranger.post("/v1/miners/miner-1/earnings").status_code == 404


def test_draining_miner_gets_no_new_jobs(client_api, miner_api, register_miner, submit_job):
    from miners.services import miner_set_draining

    register_miner(miner_api)
    submit_job(client_api)
    miner_set_draining(miner=Miner.objects.get(), draining=True)
    assert poll(miner_api).status_code == 204


def test_a_miner_serving_several_models_leases_only_what_it_asked_for(client_api, miner_api, register_miner):
    register_miner(miner_api, models=["a", "b", "c"], max_concurrent_jobs=8)
    for model in ["a", "b", "c"]:
        client_api.post("/v1/jobs", {"prompt": "x", "model": model}, format="json")
    assert poll(miner_api).status_code == 200
    assert Job.objects.filter(status=JobStatus.RUNNING).count() == 1
    assert len(poll(miner_api, max_jobs=5).json()["jobs"]) == 2


def test_a_claim_limited_to_some_models_leases_only_their_jobs(client_api, miner_api, register_miner):
    from jobs.services import job_claim

    register_miner(miner_api, models=["a", "b"], max_concurrent_jobs=8)
    for model in ["a", "b", "a", "b"]:
        client_api.post("/v1/jobs", {"prompt": "x", "model": model}, format="json")
    claimed = job_claim(miner=Miner.objects.get(), limit=8, models=["b"])
    assert [job.model for job in claimed] == ["b", "b"]
    assert Job.objects.filter(status=JobStatus.QUEUED, model="a").count() == 2


@pytest.mark.parametrize(
    "body",
    [
        {"result": {"usage": "lots"}},
        {"result": {"usage": [[1, 5]]}, "metrics": {"units": 3}},
        {"result": {"output": "x"}, "metrics": {"duration_ms": "slow"}},
    ],
)
def test_odd_usage_reports_are_ignored_not_500(client_api, miner_api, register_miner, submit_job, body):
    register_miner(miner_api)
    job = submit_job(client_api)
    poll(miner_api)
    assert miner_api.post(f"/v1/miners/{job['job_id']}/result", body, format="json").status_code == 200


def test_overlong_or_nul_miner_ids_are_rejected(make_api):
    api = make_api("miner", "odd")
    api.credentials(HTTP_X_API_KEY=api.raw_key, HTTP_X_MINER_ID="x" * 129)
    assert api.post("/v1/miners/register", {"capabilities": {"models": ["m"]}}, format="json").status_code == 422
    api.credentials(HTTP_X_API_KEY=api.raw_key)
    nul = api.get("/v1/jobs/available", {"miner_id": "a\x00b"})
    assert (nul.status_code, nul.json()["error_code"]) == (422, "MALFORMED_REQUEST")


def test_is_possible_agrees_with_the_claim_for_a_miner_without_cuda(client_api, miner_api, register_miner):
    register_miner(miner_api, models=["llama3.2"])
    response = client_api.post(
        "/v1/jobs", {"prompt": "x", "model": "llama3.2", "constraints": {"cuda": "0"}}, format="json"
    )
    assert response.json()["is_possible"] is True
    assert poll(miner_api).status_code == 200


@pytest.mark.postgres  # the portable claim takes several queries
def test_a_poll_naming_its_miner_reads_key_and_miner_in_one_query(
    client_api, miner_api, register_miner, submit_job, django_assert_num_queries
):
    register_miner(miner_api)
    submit_job(client_api)
    with django_assert_num_queries(2):  # the key with the miner, then the claim
        assert poll(miner_api).status_code == 200


def test_a_miner_named_in_the_header_but_owned_by_another_key_is_404(miner_api, make_api, register_miner):
    register_miner(miner_api)
    stranger = make_api("miner", "stranger", miner_id="miner-1")
    assert poll(stranger).status_code == 404


def test_a_revoked_key_naming_its_miner_is_401(miner_api, register_miner):
    from accounts.services import api_key_revoke

    register_miner(miner_api)
    api_key_revoke(api_key=miner_api.api_key)
    assert poll(miner_api).status_code == 401


def test_a_key_from_the_environment_used_first_with_a_miner_named_finds_that_miner(settings, miner_api, register_miner):
    from rest_framework.test import APIClient

    register_miner(miner_api)
    settings.API_KEYS_FROM_ENV = {"client": [], "miner": [], "admin": ["env-admin-key"]}
    admin = APIClient()
    admin.credentials(HTTP_X_API_KEY="env-admin-key", HTTP_X_MINER_ID="miner-1")
    # Its first use imports the key; no stored key with its prefix was there to join the miner to.
    response = admin.post("/v1/miners/heartbeat", {}, format="json")
    assert response.status_code == 200, response.content


def post_results(api, results):
    return api.post("/v1/miners/results", {"results": results}, format="json")


def test_results_of_a_batch_complete_each_job_with_its_receipt(client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api, max_concurrent_jobs=3)
    for _ in range(3):
        submit_job(client_api)
    jobs = poll(miner_api, max_jobs=3).json()["jobs"]
    results = [
        {"job_id": job["job_id"], "result": {"output": f"out {n}"}, "lease_token": job["lease_token"]}
        for n, job in enumerate(jobs)
    ]
    response = post_results(miner_api, results)
    assert response.status_code == 200, response.content
    answers = response.json()["results"]
    assert [a["job_id"] for a in answers] == [job["job_id"] for job in jobs]
    assert {a["status"] for a in answers} == {"ok"}
    for n, (job, answer) in enumerate(zip(jobs, answers, strict=True)):
        stored = Job.objects.get(pk=job["job_id"])
        assert (stored.status, stored.result) == (JobStatus.COMPLETED, {"output": f"out {n}"})
        assert answer["receipt"]["job_id"] == job["job_id"]
        assert stored.receipts.get().receipt_id == answer["receipt"]["receipt_id"]


def test_a_result_in_a_batch_for_a_job_not_held_changes_nothing_and_the_others_go_on(
    client_api, miner_api, make_api, register_miner, submit_job
):
    register_miner(miner_api)
    other = make_api("miner", "other-owner", miner_id="miner-2")
    register_miner(other)
    mine, theirs = submit_job(client_api), submit_job(client_api)
    leased = poll(miner_api).json()
    poll(other)
    if leased["job_id"] != mine["job_id"]:
        mine, theirs = theirs, mine
    missing = "00000000-0000-4000-8000-000000000000"
    response = post_results(
        miner_api,
        [
            {"job_id": theirs["job_id"], "result": {"output": "stolen"}},
            {"job_id": mine["job_id"], "result": {"output": "mine"}, "lease_token": leased["lease_token"]},
            {"job_id": missing, "result": {"output": "?"}},
        ],
    )
    assert response.status_code == 200
    refused, accepted, unknown = response.json()["results"]
    assert (refused["status"], refused["error_code"]) == ("error", "LEASE_NOT_HELD")
    assert (accepted["status"], accepted["job_status"]) == ("ok", "completed")
    assert (unknown["status"], unknown["error_code"]) == ("error", "JOB_NOT_FOUND")
    assert Job.objects.get(pk=theirs["job_id"]).status == JobStatus.RUNNING
    assert Job.objects.get(pk=theirs["job_id"]).result is None


def test_a_failure_reported_in_a_batch_fails_the_attempt(client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api)
    job = submit_job(client_api)
    leased = poll(miner_api).json()
    response = post_results(
        miner_api,
        [
            {
                "job_id": job["job_id"],
                "result": {"status": "failed", "error": "OOM"},
                "lease_token": leased["lease_token"],
            }
        ],
    )
    assert response.json()["results"] == [
        {"job_id": job["job_id"], "status": "ok", "job_status": "queued", "receipt": None}
    ]


@pytest.mark.parametrize(
    "results",
    [[], "x", [{"result": {}}], [{"job_id": "not-a-uuid", "result": {}}]],
    ids=["empty", "not-a-list", "no-job-id", "bad-job-id"],
)
def test_a_malformed_batch_of_results_is_422(miner_api, register_miner, results):
    register_miner(miner_api)
    assert post_results(miner_api, results).status_code == 422


def test_a_job_twice_in_a_batch_is_422(client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api)
    job = submit_job(client_api)
    poll(miner_api)
    twice = [{"job_id": job["job_id"], "result": {"output": "a"}}, {"job_id": job["job_id"], "result": {"output": "b"}}]
    assert post_results(miner_api, twice).status_code == 422
    assert Job.objects.get(pk=job["job_id"]).status == JobStatus.RUNNING


@pytest.fixture
def kept_lease(client_api, miner_api, register_miner, submit_job):
    """A job ``miner_api``'s poll leased, whose lease the process that answered the poll keeps:
    ``(job, lease)``."""
    register_miner(miner_api)
    job = submit_job(client_api)
    return job, poll(miner_api).json()


def post_result_reading_leases(api, job_id: str, body: dict):
    """Post a result: the response, and whether the server read the job's lease back for it."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from jobs import sql

    with CaptureQueriesContext(connection) as queries:
        response = api.post(f"/v1/miners/{job_id}/result", body, format="json")
    return response, any(q["sql"].strip().startswith(sql.LEASED.strip()[:40]) for q in queries)


@pytest.mark.postgres  # the portable completion reads its jobs in its own transaction
def test_a_result_to_the_process_that_answered_the_poll_completes_the_job_as_leased_without_reading_it(
    miner_api, kept_lease
):
    from core.crypto import signing

    job, leased = kept_lease
    response, lease_read = post_result_reading_leases(
        miner_api, job["job_id"], {"result": {"output": "done"}, "lease_token": leased["lease_token"]}
    )
    assert response.status_code == 200, response.content
    assert not lease_read
    receipt = response.json()["receipt"]
    assert signing.verify(receipt)[0]
    assert receipt["metadata"]["attempt"] == 1
    stored = Job.objects.get(pk=job["job_id"])
    assert (stored.status, stored.result) == (JobStatus.COMPLETED, {"output": "done"})
    assert stored.receipts.count() == 1


@pytest.mark.postgres
def test_a_job_leased_again_since_the_poll_kept_it_is_read_again(miner_api, kept_lease):
    from django.db.models import F

    job, leased = kept_lease
    # Its lease lapsed and the same miner leased it again elsewhere: a new token, a second attempt.
    Job.objects.filter(pk=job["job_id"]).update(lease_token="second-lease", attempt=F("attempt") + 1)
    stale = miner_api.post(
        f"/v1/miners/{job['job_id']}/result",
        {"result": {"output": "late"}, "lease_token": leased["lease_token"]},
        format="json",
    )
    assert stale.status_code == 409
    response = miner_api.post(f"/v1/miners/{job['job_id']}/result", {"result": {"output": "now"}}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["receipt"]["metadata"]["attempt"] == 2
    stored = Job.objects.get(pk=job["job_id"])
    assert (stored.status, stored.result, stored.receipts.count()) == (JobStatus.COMPLETED, {"output": "now"}, 1)


@pytest.mark.postgres
def test_another_miners_result_leaves_the_kept_job_to_its_holder(miner_api, make_api, register_miner, kept_lease):
    job, leased = kept_lease
    other = make_api("miner", "other-owner", miner_id="miner-2")
    register_miner(other)
    stolen = other.post(
        f"/v1/miners/{job['job_id']}/result",
        {"result": {"output": "stolen"}, "lease_token": leased["lease_token"]},
        format="json",
    )
    assert stolen.status_code == 409
    response, lease_read = post_result_reading_leases(
        miner_api, job["job_id"], {"result": {"output": "mine"}, "lease_token": leased["lease_token"]}
    )
    assert response.status_code == 200, response.content
    assert not lease_read
    assert Job.objects.get(pk=job["job_id"]).result == {"output": "mine"}
