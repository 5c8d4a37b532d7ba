"""Miner cycles over HTTP and over ``ws/miners/``, beside the bare-request floor of the same run.

One gunicorn (``--gunicorn`` 2x8) serves the REST API and one daphne serves ``ws/miners/``;
``--miners`` (50) miners, each with its own id, in one asyncio process. Phases, ``--seconds``
(10) each, on a queue refilled with ``--jobs`` (20,000) before each:

- *floor*: every miner loops two ``GET /health/live`` (middleware, routing, a DRF view, no
  database): the most cycles two bare requests allow here;
- *poll, batch 1*: ``POST /v1/miners/poll`` then ``POST /v1/miners/{id}/result``;
- *poll, batch 10*: ``POST /v1/miners/poll {"max_jobs": 10}`` then the ten results in one
  ``POST /v1/miners/results`` (each on its own where the server has no such route);
- *push*: each miner holds a ``ws/miners/`` socket (its concurrency 1, so the server pushes one
  job at a time), posts each result to ``POST /v1/miners/{id}/result`` on gunicorn, then sends
  ``{"type": "ready"}``. The sockets connect, and complete the job pushed on connect, before the
  clock starts.

A cycle is one job claimed and completed with its receipt. Each phase is checked as ``claims.py``
checks its own (no job handed out twice, none lost, one receipt per completed job), and reports
cycles/s, its ratio to the floor's cycles/s, and the CPU of gunicorn, daphne and PostgreSQL per cycle.

    .venv/bin/python bench/miner_cycles.py [--miners 50] [--seconds 10] [--phases floor,poll1,poll10,push]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# claims first: importing it puts bench/ first on the path, and _common then puts the project first.
from claims import fill, verify  # noqa: I001
from _common import (
    CpuMeter,
    bench_env,
    emit,
    latency_summary_ms,
    load_average,
    log,
    make_key,
    make_miner,
    pg_backend_pids,
)

from aitbc_site.testing.http import AsyncConn, build_request, http_request_sync
from aitbc_site.testing.processes import Daphne, Gunicorn

RESULT = {"output": "hello there", "usage": {"prompt_tokens": 1, "completion_tokens": 2}}
METRICS = {"duration_ms": 5, "units": 3}
OWNERS = 4


def _result_body(job: dict) -> dict:
    return {"result": RESULT, "metrics": METRICS, "lease_token": job["lease_token"]}


class Tally:
    def __init__(self):
        self.claimed, self.receipts, self.statuses, self.latency = [], [], Counter(), []
        self.cycles = 0  # completed within the timed window
        self.ended = []  # when each pushed miner's timed loop ended


async def floor_miner(port: int, deadline: float, tally: Tally, *_):
    loop = asyncio.get_running_loop()
    conn, raw = AsyncConn(port), build_request(port, "GET", "/health/live")
    while loop.time() < deadline:
        t0 = loop.time()
        for _ in range(2):
            status, _ = await conn.request(raw)
            tally.statuses[f"health {status}"] += 1
        tally.latency.append(loop.time() - t0)
        tally.receipts.append(None)
        tally.claimed.append(None)
    conn.close()


async def poll_miner(port: int, deadline: float, tally: Tally, key: str, miner_id: str, batch: int, batched: bool):
    loop = asyncio.get_running_loop()
    conn = AsyncConn(port)
    headers = {"X-Api-Key": key, "X-Miner-ID": miner_id}
    poll = build_request(port, "POST", "/v1/miners/poll", headers, {"max_jobs": batch} if batch > 1 else {})
    while loop.time() < deadline:
        t0 = loop.time()
        status, body = await conn.request(poll)
        tally.statuses[f"poll {status}"] += 1
        if status != 200:
            if status == 204:
                break
            await asyncio.sleep(0.05)
            continue
        answer = json.loads(body)
        jobs = answer["jobs"] if batch > 1 else [answer]
        tally.claimed += [job["job_id"] for job in jobs]
        if batched:
            results = [{"job_id": job["job_id"], **_result_body(job)} for job in jobs]
            raw = build_request(port, "POST", "/v1/miners/results", headers, {"results": results})
            status, body = await conn.request(raw)
            tally.statuses[f"results {status}"] += 1
            if status == 200:
                tally.receipts += [
                    (item.get("receipt") or {}).get("receipt_id") for item in json.loads(body)["results"]
                ]
        else:
            for job in jobs:
                raw = build_request(port, "POST", f"/v1/miners/{job['job_id']}/result", headers, _result_body(job))
                status, body = await conn.request(raw)
                tally.statuses[f"result {status}"] += 1
                if status == 200:
                    tally.receipts.append((json.loads(body).get("receipt") or {}).get("receipt_id"))
        tally.latency.append((loop.time() - t0) / len(jobs))
    conn.close()


async def push_miner(port: int, deadline, tally: Tally, key: str, miner_id: str, ws_port: int, started, ready):
    """A miner on ``ws/miners/``: connects and completes the job pushed on connect (untimed), waits
    for every miner to be there (``started``), then loops "ready" → pushed job → result."""
    from websockets.asyncio.client import connect

    loop = asyncio.get_running_loop()
    conn = AsyncConn(port)
    headers = {"X-Api-Key": key, "X-Miner-ID": miner_id}

    async def complete_pushed(timeout: float) -> bool:
        while True:
            message = json.loads(await asyncio.wait_for(socket.recv(), timeout=timeout))
            if message.get("type") == "job.assigned":
                break
        job = message["job"]
        tally.claimed.append(job["job_id"])
        raw = build_request(port, "POST", f"/v1/miners/{job['job_id']}/result", headers, _result_body(job))
        status, body = await conn.request(raw)
        tally.statuses[f"result {status}"] += 1
        receipt = (json.loads(body).get("receipt") or {}).get("receipt_id") if status == 200 else None
        tally.receipts.append(receipt)
        return receipt is not None

    async with connect(f"ws://127.0.0.1:{ws_port}/ws/miners/", additional_headers=headers, max_queue=None) as socket:
        await complete_pushed(30)  # the socket pushes a job on connect
        ready.append(miner_id)
        await started.wait()
        t0 = loop.time()
        while t0 < deadline[0]:
            await socket.send(json.dumps({"type": "ready"}))
            if await complete_pushed(30):
                tally.cycles += 1
            tally.latency.append(loop.time() - t0)
            t0 = loop.time()
        tally.ended.append(t0)
        # Nothing more is asked for; a job pushed all the same (a wake-up) is completed too.
        with contextlib.suppress(TimeoutError):
            while True:
                await complete_pushed(0.5)
    conn.close()


def batch_results_served(port: int, key: str, miner_id: str) -> bool:
    """Whether the server takes a batch of results in one request (the commit before it did not:
    its miners post each result on its own)."""
    headers = {"X-Api-Key": key, "X-Miner-ID": miner_id}
    return http_request_sync(port, "POST", "/v1/miners/results", headers, {"results": []})[0] not in (404, 405)


async def run_phase(kind: str, port: int, ws_port: int | None, miners: list[tuple[str, str]], seconds: float) -> dict:
    loop = asyncio.get_running_loop()
    tally = Tally()
    if kind == "push":
        # Sockets connect (each authenticated, its waiter registered) before the clock starts.
        started, ready, deadline = asyncio.Event(), [], [float("inf")]
        tasks = [
            asyncio.create_task(push_miner(port, deadline, tally, key, miner_id, ws_port, started, ready))
            for key, miner_id in miners
        ]
        while len(ready) < len(miners):
            await asyncio.sleep(0.05)
        begun = loop.time()
        deadline[0] = begun + seconds
        started.set()
        await asyncio.gather(*tasks)
        return {"elapsed": max(tally.ended) - begun, "tally": tally}
    begun = loop.time()
    deadline = begun + seconds
    if kind == "floor":
        coros = [floor_miner(port, deadline, tally) for _ in miners]
    else:
        batch = int(kind.removeprefix("poll"))
        batched = batch > 1 and batch_results_served(port, *miners[0])
        coros = [poll_miner(port, deadline, tally, key, miner_id, batch, batched) for key, miner_id in miners]
    await asyncio.gather(*coros)
    for receipt in tally.receipts:
        tally.cycles += receipt is not None or kind == "floor"
    return {"elapsed": loop.time() - begun, "tally": tally}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--miners", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--jobs", type=int, default=20000, help="jobs queued before each phase")
    parser.add_argument("--phases", default="floor,poll1,poll10,push")
    parser.add_argument("--gunicorn", default="2x8", help="WORKERSxTHREADS")
    parser.add_argument("--db", default="aitbc_miner_cycles")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()
    phases = [p for p in args.phases.split(",") if p]
    result: dict = {"benchmark": "miner_cycles", "machine": {"cpus": os.cpu_count(), "loadavg_start": load_average()}}
    with bench_env(args.db, keep_db=args.keep_db) as env:
        env.django_setup()
        from django.db import connection

        from miners.models import Miner

        keys = {f"bench-owner-{i}": make_key(f"bench-owner-{i}", "miner") for i in range(OWNERS)}
        pairs = []
        for i in range(args.miners):
            owner = f"bench-owner-{i % OWNERS}"
            pairs.append((keys[owner], make_miner(owner, f"bench-miner-{i}").miner_id))
        connection.close()
        w, t = (int(x) for x in args.gunicorn.lower().split("x"))
        out = {}
        with Gunicorn(env.env, workers=w, threads=t) as server, Daphne(env.env) as daphne:
            for kind in phases:
                # A pushed miner takes one job at a time (its concurrency); pollers ask for what they want.
                Miner.objects.update(max_concurrent_jobs=1 if kind == "push" else 1024)
                filled = fill(args.jobs)["jobs"] if kind != "floor" else 0
                log(f"{kind}: {len(pairs)} miners")
                meter = CpuMeter(
                    {
                        "gunicorn": lambda: [server.proc.pid, *server.worker_pids()],
                        "daphne": lambda: [daphne.proc.pid],
                        "postgres_backends": lambda: pg_backend_pids(args.db),
                        "bench_process (load generator)": lambda: [os.getpid()],
                    }
                )
                with meter:
                    run = asyncio.run(run_phase(kind, server.port, daphne.port, pairs, args.seconds))
                tally = run["tally"]
                cycles = tally.cycles
                phase = {
                    "cycles": cycles,
                    "cycles_per_s": round(cycles / run["elapsed"], 1),
                    "statuses": dict(tally.statuses),
                    "cycle_latency": latency_summary_ms(tally.latency),
                    "cpu": meter.report(cycles),
                }
                if kind != "floor":
                    phase["checks"] = verify(
                        env, filled=filled, claimed_lists=[tally.claimed], receipt_ids=tally.receipts
                    )
                out[kind] = phase
                log(f"  {kind}: {phase['cycles_per_s']}/s")
    if "floor" in out:
        floor = out["floor"]["cycles_per_s"]
        for kind, phase in out.items():
            if kind != "floor":
                phase["ratio_to_floor"] = round(phase["cycles_per_s"] / floor, 3)
    if "poll1" in out and "poll10" in out:
        out["poll10"]["ratio_to_poll1"] = round(out["poll10"]["cycles_per_s"] / out["poll1"]["cycles_per_s"], 2)
    result["phases"] = out
    result["notes"] = [
        "floor: two GET /health/live per cycle from each miner's connection",
        "push: the socket's claim runs in daphne, the result on gunicorn; the miner's concurrency is 1",
    ]
    result["machine"]["loadavg_end"] = load_average()
    emit(result)


if __name__ == "__main__":
    main()
