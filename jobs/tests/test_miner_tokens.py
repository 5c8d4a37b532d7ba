"""External miners stream what they decode: ``POST /v1/miners/tokens`` and ``{"type": "job.tokens"}``
on ``ws/miners/`` reach the job's ``ws/jobs/<id>/`` subscribers, fenced by the lease."""

import pytest
from asgiref.sync import async_to_sync, sync_to_async

from tests.sockets import events_sent, socket

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("in_memory_channel_layer"),
]


@pytest.fixture
def running(client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api)
    job_id = submit_job(client_api)["job_id"]
    leased = miner_api.post("/v1/miners/poll", {}, format="json").json()
    assert leased["job_id"] == job_id
    return job_id, leased["lease_token"]


def watch_while(client_api, job_id: str, action, count: int):
    """``action()`` while a client follows the job; its result and the next ``count`` events."""

    async def scenario():
        await events_sent()  # the claim's status: it comes before the snapshot, not after
        follower = socket(f"/ws/jobs/{job_id}/", client_api.raw_key)
        assert (await follower.connect())[0]
        await follower.receive_json_from(timeout=5)  # the status snapshot
        outcome = await sync_to_async(action)()
        received = [await follower.receive_json_from(timeout=5) for _ in range(count)]
        silent = await follower.receive_nothing(timeout=0.2)
        await follower.disconnect()
        return outcome, received, silent

    return async_to_sync(scenario)()


def test_posted_tokens_reach_the_jobs_socket_in_order(client_api, miner_api, running):
    job_id, lease = running
    body = {
        "tokens": [
            {"job_id": job_id, "index": 0, "text": "Hel", "lease_token": lease},
            {"job_id": job_id, "index": 1, "text": "lo", "lease_token": lease, "completion_tokens": 2},
        ]
    }
    answer, received, silent = watch_while(
        client_api, job_id, lambda: miner_api.post("/v1/miners/tokens", body, format="json"), 2
    )
    assert answer.status_code == 200, answer.content
    assert answer.json() == {"status": "ok", "relayed": 2, "refused_jobs": []}
    assert [(event["type"], event["index"], event["text"]) for event in received] == [
        ("job.token", 0, "Hel"),
        ("job.token", 1, "lo"),
    ]
    assert silent


@pytest.mark.parametrize("who", ["other miner", "stale lease"])
def test_tokens_of_a_job_the_miner_does_not_hold_are_refused(
    client_api, miner_api, make_api, register_miner, running, who
):
    job_id, lease = running
    speaker = miner_api
    if who == "other miner":
        speaker = make_api("miner", "gpu-other", miner_id="miner-2")
        register_miner(speaker)
    else:
        lease = "0" * 32
    body = {"tokens": [{"job_id": job_id, "index": 0, "text": "forged", "lease_token": lease}]}
    answer, _, silent = watch_while(
        client_api, job_id, lambda: speaker.post("/v1/miners/tokens", body, format="json"), 0
    )
    assert answer.json() == {"status": "ok", "relayed": 0, "refused_jobs": [job_id]}
    assert silent


def test_malformed_tokens_are_422(miner_api, running):
    answer = miner_api.post("/v1/miners/tokens", {"tokens": [{"job_id": "nope", "index": -1}]}, format="json")
    assert answer.status_code == 422


def test_tokens_sent_over_the_miner_socket_reach_the_jobs_socket(client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api)

    async def scenario():
        miner = socket("/ws/miners/", miner_api.raw_key, **{"X-Miner-ID": "miner-1"})
        assert (await miner.connect())[0]
        job_id = (await sync_to_async(submit_job)(client_api))["job_id"]
        assigned = (await miner.receive_json_from(timeout=5))["job"]
        await events_sent()
        follower = socket(f"/ws/jobs/{job_id}/", client_api.raw_key)
        assert (await follower.connect())[0]
        await follower.receive_json_from(timeout=5)
        piece = {"job_id": job_id, "index": 0, "text": "pushed", "lease_token": assigned["lease_token"]}
        await miner.send_json_to({"type": "job.tokens", "tokens": [piece]})
        token = await follower.receive_json_from(timeout=5)
        await miner.send_json_to({"type": "job.tokens", "tokens": [{**piece, "lease_token": "0" * 32}]})
        refused = await miner.receive_json_from(timeout=5)
        await follower.disconnect()
        await miner.disconnect()
        return job_id, token, refused

    job_id, token, refused = async_to_sync(scenario)()
    assert (token["type"], token["job_id"], token["text"]) == ("job.token", job_id, "pushed")
    assert refused == {"type": "job.tokens.refused", "job_ids": [job_id]}
