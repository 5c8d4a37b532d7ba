"""An external miner (``runminer``'s agent) streams what it decodes: a client following the job
over server-sent events (``POST /v1/chat/completions``) and one on ``ws/jobs/<id>/`` both see
the text arrive piece by piece, before the result, from a daphne with no workers of its own;
over the miner socket daphne offers (``ws/miners/?mode=tokens``) or over HTTP, fenced by the
lease either way."""

import json
import threading
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from inference import engine
from inference.agent import MinerAgent, TokenStream
from inference.testing import TINY
from jobs.models import Job, JobStatus
from miners.models import Miner

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def wait_for(condition, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not true in time"
        time.sleep(0.05)


@pytest.mark.parametrize("tokens_over", ["auto", "http"])
def test_an_external_miners_tokens_reach_an_sse_client_and_a_job_socket(
    serve, tiny_model, make_api, tmp_path, monkeypatch, tokens_over
):
    server = serve()  # no in-process workers: only the external miner runs jobs
    client_key = make_api("client", "stream-client").raw_key
    miner_key = make_api("miner", "rig-owner").raw_key
    step = engine.Generation.step

    def paced_step(batch):  # 40 ms a token: the socket joins while the job decodes
        time.sleep(0.04)
        return step(batch)

    monkeypatch.setattr(engine.Generation, "step", paced_step)
    agent = MinerAgent(
        url=server.url, api_key=miner_key, models=[TINY], miner_id="streaming-rig",
        poll_wait=1, heartbeat_seconds=1, cache_dir=tmp_path, max_jobs=1, tokens_over=tokens_over,
    )  # fmt: skip
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    try:
        wait_for(lambda: Miner.objects.filter(miner_id="streaming-rig").exists())
        body = {"model": TINY, "messages": [{"role": "user", "content": "The coordinator"}], "max_tokens": 40,
                "temperature": 0, "stream": True}  # fmt: skip
        headers = {"Authorization": f"Bearer {client_key}"}
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=60) as sse:
            assert sse.status_code == 200, sse.read()
            job_id = sse.headers["x-aitbc-job-id"]
            with connect(f"{server.ws_url}/ws/jobs/{job_id}/", additional_headers={"X-Api-Key": client_key}) as socket:
                lines = [line.removeprefix("data: ") for line in sse.iter_lines() if line]
                messages = []
                try:
                    while True:
                        messages.append(json.loads(socket.recv(timeout=30)))
                except ConnectionClosed:
                    pass
    finally:
        agent.abort()
        runner.join(timeout=30)

    # auto: daphne offers the miner socket, so the text went over it.
    assert agent.tokens.over == {"auto": "ws", "http": "http"}[tokens_over]
    job = Job.objects.get(pk=job_id)
    assert job.status == JobStatus.COMPLETED
    assert job.miner.miner_id == "streaming-rig"
    assert lines[-1] == "[DONE]"
    deltas = [json.loads(line)["choices"][0]["delta"].get("content") for line in lines[:-1]]
    pieces = [delta for delta in deltas if delta]
    assert "".join(pieces) == job.result["text"]
    assert len(pieces) > 3, "the text came as it was decoded"
    tokens = [message for message in messages if message["type"] == "job.token"]
    assert tokens, "the socket saw tokens before the result"
    assert [token["index"] for token in tokens] == list(range(tokens[0]["index"], tokens[0]["index"] + len(tokens)))
    assert job.result["text"].endswith("".join(token["text"] for token in tokens))
    assert messages[-1]["type"] == "job.status" and messages[-1]["status"] == "completed"


def test_text_streamed_over_the_miner_socket_is_fenced_by_the_lease_and_refused_once_the_job_ended(
    serve, client_api, make_api, register_miner, submit_job
):
    server = serve()
    miner_api = make_api("miner", "socket-rig-owner", miner_id="socket-rig")
    register_miner(miner_api)
    job_id = submit_job(client_api)["job_id"]
    lease = miner_api.post("/v1/miners/poll", {}, format="json").json()["lease_token"]
    http = httpx.Client(base_url=server.url, headers={"X-Api-Key": miner_api.raw_key, "X-Miner-ID": "socket-rig"})
    stream = TokenStream(http)
    stream.start()
    try:
        with connect(
            f"{server.ws_url}/ws/jobs/{job_id}/", additional_headers={"X-Api-Key": client_api.raw_key}
        ) as follower:
            json.loads(follower.recv(timeout=10))  # the status snapshot
            stream.put([{"job_id": job_id, "index": 0, "text": "Hel", "lease_token": "0" * 32}])  # another lease
            assert stream.flush(timeout=10)
            assert stream._refused == {job_id}
            stream._refused.clear()
            stream.put([{"job_id": job_id, "index": 0, "text": "Hel", "lease_token": lease}])
            assert stream.flush(timeout=10)
            token = json.loads(follower.recv(timeout=10))
        body = {"result": {"text": "Hello"}, "lease_token": lease}
        assert miner_api.post(f"/v1/miners/{job_id}/result", body, format="json").status_code == 200
        stream.put([{"job_id": job_id, "index": 1, "text": "lo", "lease_token": lease}])  # late
        assert stream.flush(timeout=10)
    finally:
        stream.close()
        http.close()
    assert stream.over == "ws"
    assert (token["type"], token["index"], token["text"]) == ("job.token", 0, "Hel")
    assert stream._refused == {job_id}
