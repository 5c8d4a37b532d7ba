"""OpenAI-compatible streams: time to first token through ``POST /v1/chat/completions``
(``stream: true``) beyond the model's own, and many concurrent streams without a lost chunk.

One daphne process (``aitbc_site.asgi``, embedded workers off, channels-redis on a Redis
database of its own, ``--redis-db`` 12) serves the streams. A miner in a process of its own
takes the jobs over ``ws/miners/`` and plays a model decoding as a continuous batch: every
``--token-ms`` it sends the next piece of every job it runs in one message (``--tokens`` pieces a
job), then each finished job's result over HTTP once those pieces are published. The message is
a ``job.tokens`` on the same socket (``--tokens-over ws``, the default; a ``ping`` after a step
that ends jobs, its ``pong`` saying the pieces are out) or ``POST /v1/miners/tokens``
(``--tokens-over http``, as ``runminer`` streams). Its own time to first token (job pushed →
first piece sent) is what a real model adds; the figure is the client's time to first token
(request sent → first content chunk read) minus it, both read from CLOCK_MONOTONIC, which the
processes share.

Phases: ``warmup``, ``--warmup`` streams one after another, reported apart (the first stream
after daphne starts pays for its first connections and its code's first run); ``ttft``,
``--requests`` streams one after another; ``concurrent``, ``--streams`` streams at once. Every
stream must carry each piece in order as a chunk of its own (a piece the channel layer lost would
arrive late, merged into its choice's last chunk), its finish chunk and ``data: [DONE]``; ``lost``
counts the pieces that did not arrive as their own chunk.

Targets: overhead p50 <= 15 ms, p99 <= 60 ms; 200 concurrent streams, 0 lost.

    .venv/bin/python bench/openai_stream.py [--warmup 3] [--requests 30] [--streams 200] [--tokens 8] [--token-ms 50] [--tokens-over ws]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CpuMeter, bench_env, emit, latency_summary_ms, load_average, log, make_key, make_miner, target

from aitbc_site.testing.processes import Daphne

TARGET_P50_MS, TARGET_P99_MS = 15, 60
MODEL = "bench-stream"
MINER_ID = "bench-rig"


# --- the miner's process -----------------------------------------------------------------


def miner_process(port: int, key: str, tokens: int, token_ms: float, over: str, pipe) -> None:
    asyncio.run(_miner(port, key, tokens, token_ms, over, pipe))


async def _miner(port: int, key: str, tokens: int, token_ms: float, over: str, pipe) -> None:
    import httpx
    from websockets.asyncio.client import connect

    headers = {"X-Api-Key": key, "X-Miner-ID": MINER_ID}
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60)
    socket = await connect(f"ws://127.0.0.1:{port}/ws/miners/", additional_headers=headers, max_queue=None)
    running: dict[str, dict] = {}  # job id → {"lease", "pushed_at", "sent"}
    own_ttft: dict[str, float] = {}
    stamps: dict[str, tuple[float, float]] = {}  # job id → (pushed, first piece sent)
    reports: set[asyncio.Task] = set()
    pongs: collections.deque[asyncio.Future] = collections.deque()

    async def take() -> None:
        async for frame in socket:
            message = json.loads(frame)
            if message.get("type") == "job.assigned":
                job = message["job"]
                running[job["job_id"]] = {"lease": job["lease_token"], "pushed_at": time.monotonic(), "sent": 0}
            elif message.get("type") == "pong" and pongs:
                pongs.popleft().set_result(None)
            elif message.get("type") in ("job.tokens.refused", "error"):
                print(f"miner: the socket answered {message}", file=sys.stderr, flush=True)

    async def send_pieces(pieces: list[dict], ending: bool) -> None:
        if over == "http":
            (await http.post("/v1/miners/tokens", json={"tokens": pieces})).raise_for_status()
            return
        await socket.send(json.dumps({"type": "job.tokens", "tokens": pieces}))
        if ending:
            # The socket handles its messages in order: the pong says the pieces were published.
            pong = asyncio.get_running_loop().create_future()
            pongs.append(pong)
            await socket.send(json.dumps({"type": "ping"}))
            await pong

    async def report(job_id: str, lease: str) -> None:
        text = "".join(f"w{index} " for index in range(tokens))
        body = {"result": {"text": text, "finish_reason": "length"}, "lease_token": lease,
                "metrics": {"prompt_tokens": 4, "completion_tokens": tokens}}  # fmt: skip
        (await http.post(f"/v1/miners/{job_id}/result", json=body)).raise_for_status()
        await socket.send(json.dumps({"type": "ready"}))

    async def decode() -> None:
        while True:
            await asyncio.sleep(token_ms / 1000)
            if not running:
                continue
            pieces, finished, now = [], [], time.monotonic()
            for job_id, job in list(running.items()):
                index = job["sent"]
                pieces.append({"job_id": job_id, "index": index, "text": f"w{index} ", "lease_token": job["lease"]})
                if index == 0:
                    own_ttft[job_id] = now - job["pushed_at"]
                    stamps[job_id] = (job["pushed_at"], now)
                job["sent"] += 1
                if job["sent"] == tokens:
                    finished.append((job_id, running.pop(job_id)["lease"]))
            # The step's pieces go out (published when answered) before any result, as runminer does.
            await send_pieces(pieces, ending=bool(finished))
            for job_id, lease in finished:
                task = asyncio.create_task(report(job_id, lease))
                reports.add(task)
                task.add_done_callback(reports.discard)

    tasks = [asyncio.create_task(take()), asyncio.create_task(decode())]
    pipe.send("ready")
    while True:
        command = await asyncio.to_thread(pipe.recv)
        if command == "collect":
            pipe.send((dict(own_ttft), dict(stamps)))
        elif command == "stop":
            break
    for task in tasks:
        task.cancel()
    await socket.close()
    await http.aclose()


# --- the clients --------------------------------------------------------------------------


async def one_stream(http, key: str, tokens: int) -> dict:
    import httpx

    try:
        return await _one_stream(http, key, tokens)
    except httpx.HTTPError as error:  # counted, as an answer with an error status is
        return {"error": f"{type(error).__name__}: {error}"}


async def _one_stream(http, key: str, tokens: int) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens, "stream": True}
    sent_at = time.monotonic()
    first_at, pieces, finished, done = None, [], False, False
    async with http.stream("POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}) as r:
        if r.status_code != 200:
            return {"error": f"{r.status_code} {(await r.aread())[:200]!r}"}
        job_id = r.headers["x-aitbc-job-id"]
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                done = True
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                return {"error": chunk["error"]["message"]}
            choice = chunk["choices"][0]
            if choice["delta"].get("content"):
                first_at = first_at or time.monotonic()
                pieces.append(choice["delta"]["content"])
            finished = finished or choice["finish_reason"] is not None
    expected = [f"w{index} " for index in range(tokens)]
    return {
        "job_id": job_id,
        "sent_at": sent_at,
        "first_at": first_at,
        "ttft": (first_at - sent_at) if first_at else None,
        "lost": sum(1 for index, piece in enumerate(expected) if index >= len(pieces) or pieces[index] != piece),
        "whole": "".join(pieces) == "".join(expected) and finished and done,
        "pieces": pieces,
    }


async def run_streams(port: int, key: str, *, count: int, concurrent: bool, tokens: int) -> list[dict]:
    import httpx

    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=count + 10)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120, limits=limits) as http:
        if concurrent:
            return list(await asyncio.gather(*(one_stream(http, key, tokens) for _ in range(count))))
        return [await one_stream(http, key, tokens) for _ in range(count)]


def phase_result(streams: list[dict], miner_said: tuple[dict, dict], *, count: int) -> dict:
    own_ttft, stamps = miner_said
    errors = [s["error"] for s in streams if "error" in s]
    ok = [s for s in streams if "error" not in s]
    stamped = [(s, stamps[s["job_id"]]) for s in ok if s["first_at"] and s["job_id"] in stamps]
    overhead = [s["ttft"] - own_ttft[s["job_id"]] for s in ok if s["ttft"] is not None and s["job_id"] in own_ttft]
    return {
        "streams": count,
        "errors": len(errors),
        "error_samples": sorted(set(map(str, errors)))[:3],
        "whole_streams": sum(1 for s in ok if s["whole"]),
        "lost_chunks": sum(s["lost"] for s in ok),
        "ttft_client": latency_summary_ms([s["ttft"] for s in ok if s["ttft"] is not None]),
        "ttft_miner_own": latency_summary_ms([own_ttft[s["job_id"]] for s in ok if s["job_id"] in own_ttft]),
        "ttft_overhead": latency_summary_ms(overhead),
        # The overhead's two legs: request sent → job pushed to the miner; first piece sent → read.
        "to_miner": latency_summary_ms([pushed - s["sent_at"] for s, (pushed, _) in stamped]),
        "from_miner": latency_summary_ms([s["first_at"] - first for s, (_, first) in stamped]),
        "lost_samples": [s["pieces"] for s in ok if s["lost"]][:3],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=int, default=3, help="streams one at a time before the ttft phase, apart")
    parser.add_argument("--requests", type=int, default=30, help="streams of the ttft phase, one at a time")
    parser.add_argument("--streams", type=int, default=200, help="streams of the concurrent phase")
    parser.add_argument("--tokens", type=int, default=8, help="pieces each job streams")
    parser.add_argument("--token-ms", type=float, default=50, help="the played model's time per decoding step")
    parser.add_argument(
        "--tokens-over", choices=("ws", "http"), default="ws",
        help="how the miner streams its pieces: job.tokens messages on its ws/miners/ socket, or POST /v1/miners/tokens",
    )  # fmt: skip
    parser.add_argument("--db", default="aitbc_bench_openai")
    parser.add_argument("--redis-db", type=int, default=12, help="a Redis database of the benchmark's own")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()

    extra = {"REDIS_URL": f"redis://127.0.0.1:6379/{args.redis_db}"}

    with bench_env(args.db, keep_db=args.keep_db, extra=extra) as env:
        env.django_setup()
        client_key = make_key("bench-openai-client", "client")
        miner_key = make_key("bench-openai-miner", "miner")
        make_miner("bench-openai-miner", MINER_ID, models=(MODEL,), max_concurrent_jobs=args.streams + 10)
        daphne = Daphne(env.env).start()
        ctx = mp.get_context("spawn")
        pipe, child_end = ctx.Pipe()
        miner = ctx.Process(
            target=miner_process,
            args=(daphne.port, miner_key, args.tokens, args.token_ms, args.tokens_over, child_end),
        )
        miner.start()
        try:
            assert pipe.recv() == "ready"
            groups = {
                "daphne": lambda: [daphne.proc.pid],
                "miner": lambda: [miner.pid],
                "clients": lambda: [os.getpid()],
            }
            phases = {}
            for name, count, concurrent in (
                ("warmup", args.warmup, False),
                ("ttft", args.requests, False),
                ("concurrent", args.streams, True),
            ):
                log(f"phase {name}: {count} streams{' at once' if concurrent else ', one at a time'}")
                with CpuMeter(groups) as meter:
                    streams = asyncio.run(
                        run_streams(daphne.port, client_key, count=count, concurrent=concurrent, tokens=args.tokens)
                    )
                pipe.send("collect")
                phases[name] = {**phase_result(streams, pipe.recv(), count=count), "cpu": meter.report()}
            pipe.send("stop")
            miner.join(timeout=30)
        finally:
            if miner.is_alive():
                miner.terminate()
                miner.join(timeout=5)
            daphne_log = daphne.log(200_000)
            daphne.stop()

    overhead = phases["ttft"]["ttft_overhead"]
    emit(
        {
            "benchmark": "openai_stream",
            "tokens_per_stream": args.tokens,
            "token_ms": args.token_ms,
            "tokens_over": args.tokens_over,
            "phases": phases,
            "targets": {
                "ttft_overhead_p50_ms": target(overhead.get("p50_ms"), TARGET_P50_MS, higher_is_better=False),
                "ttft_overhead_p99_ms": target(overhead.get("p99_ms"), TARGET_P99_MS, higher_is_better=False),
                "concurrent_lost_chunks": target(phases["concurrent"]["lost_chunks"], 0, higher_is_better=False),
                "concurrent_whole_streams": target(
                    phases["concurrent"]["whole_streams"], args.streams, higher_is_better=True
                ),
            },
            "load_average": load_average(),
            "daphne_warnings": [line for line in daphne_log.splitlines() if "WARNING" in line or "ERROR" in line][:10],
        }
    )


if __name__ == "__main__":
    main()
