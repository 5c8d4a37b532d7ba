"""The flow existing AITBC clients and miners run, end to end over HTTP."""

from core.crypto import signing


def test_existing_client_and_miner_flow(client_api, miner_api):
    registered = miner_api.post(
        "/v1/miners/register",
        {
            "capabilities": {"gpus": [{"name": "RTX 4090", "memory_mb": 24576}], "models": ["llama3.2"]},
            "concurrency": 1,
        },
        format="json",
    )
    assert registered.status_code == 200
    assert registered.json()["status"] == "ok"
    assert registered.json()["miner_id"] == "miner-1"

    submitted = client_api.post(
        "/v1/jobs",
        {"payload": {"type": "inference", "prompt": "hi", "model": "llama3.2"}, "ttl_seconds": 900},
        format="json",
    )
    assert submitted.status_code == 201
    job_id = submitted.json()["job_id"]
    assert submitted.json()["status"] == "queued"
    assert submitted.json()["state"] == "QUEUED"

    polled = miner_api.post("/v1/miners/poll", {"max_wait_seconds": 0}, format="json")
    assert polled.status_code == 200
    assert polled.json()["job_id"] == job_id
    assert polled.json()["payload"]["prompt"] == "hi"

    completed = miner_api.post(
        f"/v1/miners/{job_id}/result",
        {"result": {"output": "hello there"}, "metrics": {"duration_ms": 120, "units": 3}},
        format="json",
    )
    assert completed.status_code == 200
    receipt = completed.json()["receipt"]
    assert receipt["signature"]["alg"] == "Ed25519"
    assert signing.verify(receipt) == (True, None)

    fetched = client_api.get(f"/v1/jobs/{job_id}/receipt")
    assert fetched.status_code == 200
    assert fetched.json()["receipt_id"] == receipt["receipt_id"]

    job = client_api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "completed"
    assert job["state"] == "COMPLETED"
    assert job["result"] == {"output": "hello there"}
    assert job["miner_id"] == job["assigned_miner_id"] == "miner-1"

    result = client_api.get(f"/v1/jobs/{job_id}/result").json()
    assert result["result"] == {"output": "hello there"}
    assert result["receipt"]["receipt_id"] == receipt["receipt_id"]
