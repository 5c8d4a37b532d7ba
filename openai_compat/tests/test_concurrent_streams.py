"""Many OpenAI streams at once through daphne on the Redis channel layer: a miner on
``ws/miners/`` decodes all their jobs as one batch, posting a piece of each every step, and every
stream must carry every piece as a chunk of its own, in order, before its finish chunk."""

import asyncio
import json

import httpx
import pytest
from django.conf import settings
from websockets.asyncio.client import connect

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not settings.REDIS_URL, reason="needs Redis (set REDIS_URL); CI always runs it"),
]

STREAMS, PIECES, STEP_SECONDS = 200, 8, 0.02
MODEL = "llama3.2"


def piece(index: int) -> str:
    return f"w{index} "


async def play_miner(server, headers: dict, stop: asyncio.Event) -> None:
    """Takes the jobs pushed to it and decodes them together: each step, one
    ``POST /v1/miners/tokens`` with the next piece of every job it runs; then each result."""
    running: dict[str, dict] = {}
    async with (
        httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60) as http,
        connect(f"{server.ws_url}/ws/miners/", additional_headers=headers, max_queue=None) as socket,
    ):

        async def take() -> None:
            async for frame in socket:
                message = json.loads(frame)
                if message.get("type") == "job.assigned":
                    running[message["job"]["job_id"]] = {"lease": message["job"]["lease_token"], "sent": 0}

        taking = asyncio.create_task(take())
        while not stop.is_set():
            await asyncio.sleep(STEP_SECONDS)
            if not running:
                continue
            pieces, finished = [], []
            for job_id, job in list(running.items()):
                pieces.append(
                    {"job_id": job_id, "index": job["sent"], "text": piece(job["sent"]), "lease_token": job["lease"]}
                )
                job["sent"] += 1
                if job["sent"] == PIECES:
                    finished.append((job_id, running.pop(job_id)["lease"]))
            (await http.post("/v1/miners/tokens", json={"tokens": pieces})).raise_for_status()
            for job_id, lease in finished:
                result = {"text": "".join(map(piece, range(PIECES))), "finish_reason": "length"}
                body = {"result": result, "lease_token": lease, "metrics": {"completion_tokens": PIECES}}
                (await http.post(f"/v1/miners/{job_id}/result", json=body)).raise_for_status()
            if finished:
                await socket.send(json.dumps({"type": "ready"}))
        taking.cancel()


async def one_stream(http: httpx.AsyncClient, key: str) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": PIECES, "stream": True}
    contents, finish_reasons, done = [], [], False
    async with http.stream("POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            [choice] = json.loads(line.removeprefix("data: "))["choices"]
            if choice["delta"].get("content"):
                contents.append(choice["delta"]["content"])
            if choice["finish_reason"]:
                finish_reasons.append(choice["finish_reason"])
    return {"contents": contents, "finish_reasons": finish_reasons, "done": done}


async def streams_at_once(server, client_key: str, miner_headers: dict) -> list[dict]:
    stop = asyncio.Event()
    miner = asyncio.create_task(play_miner(server, miner_headers, stop))
    limits = httpx.Limits(max_connections=STREAMS + 10, max_keepalive_connections=STREAMS + 10)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as http:
            return await asyncio.gather(*(one_stream(http, client_key) for _ in range(STREAMS)))
    finally:
        stop.set()
        await miner


def test_every_piece_of_many_concurrent_streams_arrives_as_a_chunk_of_its_own(
    serve, make_api, miner_api, register_miner
):
    register_miner(miner_api, models=(MODEL,), max_concurrent_jobs=STREAMS)
    client_key = make_api("client", "streamer").raw_key
    # Pooled connections, as deployed: a connection per waiting request would exhaust PostgreSQL's.
    server = serve(DATABASE_POOL="true", DATABASE_POOL_MAX_SIZE="10")

    streams = asyncio.run(
        streams_at_once(server, client_key, {"X-Api-Key": miner_api.raw_key, "X-Miner-ID": "miner-1"})
    )

    expected = [piece(index) for index in range(PIECES)]
    merged = [stream["contents"] for stream in streams if stream["contents"] != expected]
    assert merged == [], f"{len(merged)} of {STREAMS} streams had pieces merged or missing: {merged[:3]}"
    assert all(stream["finish_reasons"] == ["length"] and stream["done"] for stream in streams)
