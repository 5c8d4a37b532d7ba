import pytest

from jobs.models import Job, JobPriority


def test_tutorial_body_is_accepted_as_an_inference_job(client_api):
    response = client_api.post(
        "/v1/jobs",
        {"prompt": "Explain quantum computing", "model": "llama3.2", "params": {"max_tokens": 256}},
        format="json",
    )
    assert response.status_code == 201
    job = response.json()
    assert job["type"] == "inference"
    assert job["payload"]["prompt"] == "Explain quantum computing"
    assert job["payload"]["params"] == {"max_tokens": 256}
    assert job["ttl_seconds"] == 900


def test_client_alias_route_submits(client_api):
    response = client_api.post("/v1/client/jobs", {"prompt": "hi", "model": "m"}, format="json")
    assert response.status_code == 201
    assert client_api.get(f"/v1/client/jobs/{response.json()['job_id']}/status").json()["status"] == "queued"


def test_unknown_job_type_is_422_invalid_job_type(client_api):
    response = client_api.post("/v1/jobs", {"payload": {"type": "mining", "prompt": "x", "model": "m"}}, format="json")
    assert response.status_code == 422
    assert response.json()["error_code"] == "INVALID_JOB_TYPE"
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    "body, field",
    [
        ({"payload": {"type": "inference", "model": "m"}}, "prompt"),
        ({"payload": {"type": "inference", "prompt": "x", "model": 7}}, "model"),
        ({"payload": {"type": "embedding", "model": "m"}}, "input"),
        ({"prompt": "x", "model": "m", "params": {"temperature": 7}}, "temperature"),
        ({"prompt": "x", "model": "m", "ttl_seconds": 0}, "ttl_seconds"),
        ({"prompt": "x", "model": "m", "priority": "whenever"}, "priority"),
        ({"prompt": "x", "model": "m", "constraints": {"min_vram_gb": "lots"}}, "min_vram_gb"),
    ],
)
def test_invalid_submissions_are_422_with_field_errors(client_api, body, field):
    response = client_api.post("/v1/jobs", body, format="json")
    assert response.status_code == 422
    payload = response.json()
    assert payload["error_code"] == "VALIDATION_ERROR"
    assert field in str(payload["errors"])


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"'])
def test_malformed_bodies_are_422_never_500(client_api, raw):
    response = client_api.generic("POST", "/v1/jobs", raw, content_type="application/json")
    assert response.status_code == 422
    assert "error_code" in response.json()


def test_idempotency_key_returns_the_first_job(client_api):
    body = {"prompt": "hi", "model": "m"}
    first = client_api.post("/v1/jobs", body, format="json", HTTP_IDEMPOTENCY_KEY="abc")
    again = client_api.post("/v1/jobs", body, format="json", HTTP_IDEMPOTENCY_KEY="abc")
    assert first.status_code == again.status_code == 201
    assert first.json()["job_id"] == again.json()["job_id"]
    assert again["Idempotent-Replayed"] == "true"
    assert Job.objects.count() == 1


def test_idempotency_key_reused_for_a_different_request_is_409(client_api):
    client_api.post("/v1/jobs", {"prompt": "hi", "model": "m"}, format="json", HTTP_IDEMPOTENCY_KEY="k")
    response = client_api.post("/v1/jobs", {"prompt": "other", "model": "m"}, format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert response.status_code == 409
    assert response.json()["error_code"] == "IDEMPOTENCY_KEY_REUSED"


def test_idempotency_keys_are_per_client(client_api, other_client_api):
    a = client_api.post("/v1/jobs", {"prompt": "hi", "model": "m"}, format="json", HTTP_IDEMPOTENCY_KEY="same")
    b = other_client_api.post("/v1/jobs", {"prompt": "hi", "model": "m"}, format="json", HTTP_IDEMPOTENCY_KEY="same")
    assert a.json()["job_id"] != b.json()["job_id"]


def test_job_for_a_model_nobody_serves_is_accepted_but_not_possible(client_api, submit_job):
    job = submit_job(client_api, model="nobody-serves-this")
    assert job["status"] == "queued"
    assert job["is_possible"] is False
    assert job["estimated_wait_seconds"] is None


def test_queued_job_reports_queue_position_and_wait(client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api, models=["llama3.2"], max_concurrent_jobs=2)
    first = submit_job(client_api)
    second = submit_job(client_api)
    view = client_api.get(f"/v1/jobs/{second['job_id']}").json()
    assert first["queue_position"] == 1
    assert view["queue_position"] == 2
    assert view["is_possible"] is True
    assert view["estimated_wait_seconds"] > 0


def test_priority_names_are_stored_and_reported(client_api):
    response = client_api.post("/v1/jobs", {"prompt": "x", "model": "m", "priority": "urgent"}, format="json")
    assert response.json()["priority"] == "urgent"
    assert Job.objects.get().priority == JobPriority.URGENT


def test_result_is_425_until_the_job_is_terminal(client_api, submit_job):
    job = submit_job(client_api)
    response = client_api.get(f"/v1/jobs/{job['job_id']}/result")
    assert response.status_code == 425
    assert response.json() == {"detail": "job not ready", "error_code": "JOB_NOT_READY"}


def test_receipt_is_404_until_one_exists(client_api, submit_job):
    job = submit_job(client_api)
    assert client_api.get(f"/v1/jobs/{job['job_id']}/receipt").status_code == 404
    assert client_api.get(f"/v1/jobs/{job['job_id']}/receipts").json() == {
        "items": [],
        "openings": {},
        "next_cursor": None,
    }


def test_cancel_then_cancel_again_is_409(client_api, submit_job):
    job = submit_job(client_api)
    cancelled = client_api.post(f"/v1/jobs/{job['job_id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["state"] == "CANCELED"
    again = client_api.delete(f"/v1/jobs/{job['job_id']}")
    assert again.status_code == 409
    assert again.json()["error_code"] == "JOB_NOT_CANCELABLE"


def test_delete_cancels(client_api, submit_job):
    job = submit_job(client_api)
    assert client_api.delete(f"/v1/jobs/{job['job_id']}").json()["status"] == "cancelled"


def test_cancelled_job_result_is_terminal(client_api, submit_job):
    job = submit_job(client_api)
    client_api.post(f"/v1/jobs/{job['job_id']}/cancel")
    response = client_api.get(f"/v1/jobs/{job['job_id']}/result")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["receipt"] is None


def test_unknown_and_malformed_job_ids_are_404(client_api):
    assert client_api.get("/v1/jobs/00000000-0000-0000-0000-000000000000").json()["error_code"] == "JOB_NOT_FOUND"
    response = client_api.get("/v1/jobs/not-a-uuid")
    assert response.status_code == 404
    assert response.json()["error_code"] == "NOT_FOUND"


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "nul \x00 inside", "model": "m"},
        {"prompt": "x", "model": "m\x00"},
        {"payload": {"prompt": "x", "model": "m", "extra": {"k\x00": 1}}},
    ],
)
def test_nul_characters_are_422_not_500(client_api, body):
    response = client_api.post("/v1/jobs", body, format="json")
    assert response.status_code == 422
    assert not Job.objects.exists()


def test_nul_in_the_idempotency_key_is_422(client_api):
    response = client_api.post("/v1/jobs", {"prompt": "x", "model": "m"}, format="json", HTTP_IDEMPOTENCY_KEY="a\x00b")
    assert response.status_code == 422


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "x" * 2_000_000, "model": "m"},
        {"payload": {"type": "inference", "prompt": "x" * 2_000_000, "model": "m"}},
        {"messages": [{"role": "user", "content": "x" * 60_000}] * 2, "model": "m"},
        {"type": "embedding", "input": ["x" * 60_000] * 2, "model": "m"},
        {"type": "embedding", "input": ["x"] * 257, "model": "m"},
    ],
)
def test_text_past_the_limit_is_422_input_too_long(client_api, body):
    response = client_api.post("/v1/jobs", body, format="json")

    assert response.status_code == 422
    assert response.json()["error_code"] == "INPUT_TOO_LONG"
    assert not Job.objects.exists()


def test_a_prompt_at_the_limit_is_accepted(client_api, settings):
    settings.JOB_MAX_INPUT_CHARS = 10

    assert client_api.post("/v1/jobs", {"prompt": "x" * 10, "model": "m"}, format="json").status_code == 201
    response = client_api.post("/v1/jobs", {"prompt": "x" * 11, "model": "m"}, format="json")
    assert response.json()["error_code"] == "INPUT_TOO_LONG"


def test_a_payload_past_the_limit_is_422_payload_too_large(client_api, settings):
    settings.JOB_MAX_PAYLOAD_BYTES = 2048
    body = {"payload": {"type": "inference", "prompt": "hi", "model": "m", "notes": "é" * 1024}}

    response = client_api.post("/v1/jobs", body, format="json")

    assert response.status_code == 422
    assert response.json()["error_code"] == "PAYLOAD_TOO_LARGE"
