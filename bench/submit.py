"""POST /v1/jobs throughput and latency against the production setup (gunicorn gthread + PostgreSQL).

(a) closed loop: ``--connections`` (64) clients submitting back to back with wrk (+ a Lua
    script rotating several client keys) for each gunicorn workers×threads combination; the
    best is kept. Target >= 600 jobs/s.
(b) open loop: ``--rate`` (300) jobs/s offered on a fixed schedule for ``--open-duration``
    seconds by an asyncio raw-HTTP generator; latency runs from each request's *scheduled*
    send time, so a stalled server cannot hide queueing (no coordinated omission).
    Target p99 <= 50 ms.

    .venv/bin/python bench/submit.py [--combos 2x4,3x4,4x4] [--duration 10] [--rate 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    MODEL,
    SUBMIT_BODY,
    CpuMeter,
    bench_env,
    emit,
    ensure_wrk,
    latency_summary_ms,
    load_average,
    log,
    make_key,
    make_miner,
    pg_backend_pids,
    prefill_jobs,
    target,
)

from aitbc_site.testing.http import AsyncConn, build_request
from aitbc_site.testing.processes import Gunicorn

TARGET_JOBS_PER_S = 600
TARGET_OPEN_P99_MS = 50

WRK_LUA = r"""
local keys = {%(keys)s}
local body = %(body)s
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  ok = 0
  bad = 0
  reqs = {}
  for i, k in ipairs(keys) do
    reqs[i] = wrk.format("POST", "/v1/jobs", {["Content-Type"] = "application/json", ["X-Api-Key"] = k}, body)
  end
  idx = math.random(#reqs)
end
function request()
  idx = idx %% #reqs + 1
  return reqs[idx]
end
function response(status, headers, body)
  if status == 201 then ok = ok + 1 else bad = bad + 1 end
end
function done(summary, latency, requests)
  local nok, nbad = 0, 0
  for _, t in ipairs(threads) do nok = nok + t:get("ok"); nbad = nbad + t:get("bad") end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"ok":%%d,"bad":%%d,"err_connect":%%d,"err_read":%%d,' ..
    '"err_write":%%d,"err_status":%%d,"err_timeout":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"max_us":%%d,"mean_us":%%.1f}\n',
    summary.requests, summary.duration, nok, nbad, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def lua_script(keys: list[str]) -> str:
    quote = lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'  # noqa: E731
    return WRK_LUA % {"keys": ", ".join(quote(k) for k in keys), "body": quote(json.dumps(SUBMIT_BODY))}


def run_wrk(wrk: str, port: int, script: Path, *, connections: int, seconds: float, threads: int = 2) -> dict:
    cmd = [
        wrk,
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}/v1/jobs",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    raw = json.loads(line[len("WRKJSON ") :])
    secs = raw["duration_us"] / 1e6
    return {
        "generator": "wrk",
        "seconds": round(secs, 2),
        "requests": raw["requests"],
        "created_201": raw["ok"],
        "non_201": raw["bad"],
        "socket_errors": {k[4:]: raw[k] for k in ("err_connect", "err_read", "err_write", "err_timeout") if raw[k]},
        "jobs_per_s": round(raw["ok"] / secs, 1),
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p90_ms": round(raw["p90_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "max_ms": round(raw["max_us"] / 1000, 2),
        "generator_cpu_s": round(wrk_cpu, 2),
    }


# --- fallback closed loop in Python (only if wrk cannot be had) ----------------------------


async def _closed_loop_py(port: int, raws: list[bytes], connections: int, seconds: float) -> dict:
    loop = asyncio.get_running_loop()
    latencies, statuses = [], Counter()
    stop_at = loop.time() + seconds

    async def client(i: int):
        conn, n = AsyncConn(port), i
        while loop.time() < stop_at:
            t0 = loop.time()
            status, _ = await conn.request(raws[n % len(raws)])
            latencies.append(loop.time() - t0)
            statuses[status] += 1
            n += 1
        conn.close()

    started = loop.time()
    await asyncio.gather(*(client(i) for i in range(connections)))
    elapsed = loop.time() - started
    return {
        "generator": "python-asyncio (wrk unavailable)",
        "seconds": round(elapsed, 2),
        "requests": sum(statuses.values()),
        "created_201": statuses[201],
        "non_201": sum(v for k, v in statuses.items() if k != 201),
        "jobs_per_s": round(statuses[201] / elapsed, 1),
        **latency_summary_ms(latencies),
    }


# --- open loop --------------------------------------------------------------------------


async def open_loop(port: int, raws: list[bytes], *, rate: float, seconds: float, preopen: int = 32) -> dict:
    """Send request i at t0 + i/rate whatever happened before; latency = done - scheduled."""
    loop = asyncio.get_running_loop()
    idle: list[AsyncConn] = []
    # Open the connections ahead and use each once: a gthread worker hands a freshly accepted
    # connection to a thread that blocks until its first request arrives, so idle unused
    # connections would pin the server's threads (seen as 5-15 s stalls at the start of a run).
    health = build_request(port, "GET", "/health/live")
    for _ in range(preopen):
        conn = AsyncConn(port)
        await conn.request(health)
        idle.append(conn)
    latencies, lags, statuses, timeline = [], [], Counter(), []
    in_flight = peak = 0

    async def one(t_sched: float, raw: bytes):
        nonlocal in_flight, peak
        conn = idle.pop() if idle else AsyncConn(port)
        in_flight += 1
        peak = max(peak, in_flight)
        lags.append(loop.time() - t_sched)
        try:
            status, _ = await conn.request(raw)
        except Exception as exc:  # counted, not fatal
            status = type(exc).__name__
            conn.close()
        latencies.append(loop.time() - t_sched)
        timeline.append((t_sched, latencies[-1]))
        statuses[status] += 1
        in_flight -= 1
        idle.append(conn)

    total = int(rate * seconds)
    t0 = loop.time() + 0.05
    tasks = []
    for i in range(total):
        t_sched = t0 + i / rate
        delay = t_sched - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(t_sched, raws[i % len(raws)])))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - t0
    for conn in idle:
        conn.close()
    return {
        "generator": "python-asyncio open loop (fixed schedule; latency from scheduled send time)",
        "offered_per_s": rate,
        "seconds": round(elapsed, 2),
        "requests": total,
        "created_201": statuses[201],
        "other_statuses": {str(k): v for k, v in statuses.items() if k != 201},
        "achieved_per_s": round(statuses[201] / elapsed, 1),
        "peak_in_flight": peak,
        "send_lag_p99_ms": round(sorted(lags)[int(0.99 * (len(lags) - 1))] * 1000, 2) if lags else None,
        "slowest_5 [scheduled_at_s, latency_ms]": [
            [round(t - t0, 3), round(x * 1000, 1)] for t, x in sorted(timeline, key=lambda p: -p[1])[:5]
        ],
        **latency_summary_ms(latencies),
    }


def server_breakdown(key: str, n: int = 200) -> dict:
    """Median wall time of each piece of one POST /v1/jobs, in this process (same code, same DB).

    Wall time includes the PostgreSQL round trips; the CPU meter above splits Python from
    PostgreSQL. The queue is emptied first, so queue-position counts are cheap here."""
    import statistics as st

    from django.db import connection
    from django.test import Client

    from accounts.services import api_key_authenticate
    from jobs import selectors, services
    from jobs.api.serializers import JobSerializer, JobSubmitSerializer

    reset_jobs()
    client = Client(HTTP_HOST="127.0.0.1")
    body = json.dumps(SUBMIT_BODY)
    user = api_key_authenticate(raw_key=key).user

    def validated():
        s = JobSubmitSerializer(data=SUBMIT_BODY)
        s.is_valid(raise_exception=True)
        return s.validated_data

    data = validated()
    job = services.job_submit(client=user, **data).job

    def visible():
        return selectors.with_queue_position(selectors.jobs_visible_to(user=user)).order_by("-created_at", "-id")

    annotated = visible().get(pk=job.pk)
    outlook = selectors.queue_outlook(jobs=[annotated])

    def cursor_select_1():
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")

    pieces = {
        "whole request (django test client, no HTTP server)": lambda: client.post(
            "/v1/jobs", body, content_type="application/json", HTTP_X_API_KEY=key
        ),
        "middleware floor: GET /health/live": lambda: client.get("/health/live"),
        "auth: accounts.services.api_key_authenticate": lambda: api_key_authenticate(raw_key=key),
        "JobSubmitSerializer.is_valid": validated,
        "jobs.services.job_submit (one statement: INSERT + NOTIFY + queue position)": lambda: services.job_submit(
            client=user, **data
        ),
        "selectors.queue_outlook (cached per kind of job)": lambda: selectors.queue_outlook(jobs=[annotated]),
        "JobSerializer(job).data": lambda: JobSerializer(annotated, context={"outlook": outlook}).data,
        "one ORM-free round trip: SELECT 1 through Django's cursor": cursor_select_1,
    }
    out = {}
    for name, fn in pieces.items():
        for _ in range(10):
            fn()
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        out[name] = round(st.median(samples) * 1000, 3)
    connection.close()
    reset_jobs()
    return out


def reset_jobs() -> int:
    """Empty the queue between runs so every run starts from the same (shallow) queue."""
    from django.db import connection

    from jobs.models import Job, Receipt

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {Job._meta.db_table}")
        n = cursor.fetchone()[0]
        cursor.execute(f"TRUNCATE {Receipt._meta.db_table}, {Job._meta.db_table} CASCADE")
        cursor.execute(f"VACUUM ANALYZE {Job._meta.db_table}")
    connection.close()
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--combos", default="2x1,2x4,4x4", help="gunicorn WORKERSxTHREADS to try (comma-separated)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=6, help="closed-loop seconds per measured run")
    parser.add_argument("--warmup", type=float, default=2, help="closed-loop warm-up seconds per server")
    parser.add_argument("--repeats", type=int, default=3, help="measured closed-loop runs per combo (median kept)")
    parser.add_argument("--rate", type=float, default=300, help="open-loop offered jobs/s (the target's rate)")
    parser.add_argument("--open-duration", type=float, default=10)
    parser.add_argument(
        "--sustainable-rate",
        type=float,
        default=-1,
        help="a second open-loop run at this rate; -1: half the best closed-loop jobs/s; 0: skip",
    )
    parser.add_argument(
        "--queue-depth", type=int, default=0, help="jobs already queued (same model) at the start of every measured run"
    )
    parser.add_argument("--keys", type=int, default=8, help="client API keys (users) to rotate")
    parser.add_argument("--no-pool-compare", action="store_true", help="skip the DATABASE_POOL=false run")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the in-process per-piece timing")
    parser.add_argument("--throttle", action="store_true", help="rate limits on (very high) through Redis")
    parser.add_argument("--no-miner", action="store_true", help="no registered miner (skips the wait estimate)")
    parser.add_argument("--force-python", action="store_true", help="use the Python closed-loop generator")
    parser.add_argument("--db", default="aitbc_bench")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()

    combos = [tuple(int(x) for x in c.lower().split("x")) for c in args.combos.split(",") if c]
    wrk = None if args.force_python else ensure_wrk()
    if wrk is None:
        log("wrk unavailable: falling back to the Python closed-loop generator")

    result: dict = {
        "benchmark": "submit",
        "endpoint": "POST /v1/jobs",
        "body": SUBMIT_BODY,
        "machine": {"cpus": os.cpu_count(), "loadavg_start": load_average()},
    }
    with bench_env(args.db, keep_db=args.keep_db, throttle=args.throttle) as env:
        env.django_setup()
        keys = [make_key(f"bench-client-{i}", "client") for i in range(args.keys)]
        if not args.no_miner:
            make_miner("bench-miner-owner", "bench-miner-1", max_concurrent_jobs=4)
        script = Path(tempfile.mkstemp(suffix=".lua", dir=env.data_dir)[1])
        script.write_text(lua_script(keys))

        def start_queue() -> None:
            """Empty the jobs table, then (``--queue-depth``) queue a backlog the submits land behind."""
            reset_jobs()
            if args.queue_depth:
                from django.db import connection

                prefill_jobs(args.queue_depth, client_username="bench-backlog")
                connection.close()

        def raws_for(port: int) -> list[bytes]:
            return [build_request(port, "POST", "/v1/jobs", {"X-Api-Key": k}, SUBMIT_BODY) for k in keys]

        def cpu_meter(server: Gunicorn) -> CpuMeter:
            return CpuMeter(
                {
                    "gunicorn": lambda: ([server.proc.pid] if server.proc else []) + server.worker_pids(),
                    "postgres_backends": lambda: pg_backend_pids(args.db),
                    "bench_process": lambda: [os.getpid()],
                }
            )

        def closed_run(server: Gunicorn) -> dict:
            if wrk:
                run_wrk(wrk, server.port, script, connections=args.connections, seconds=args.warmup)
            else:
                asyncio.run(_closed_loop_py(server.port, raws_for(server.port), args.connections, args.warmup))
            runs = []
            for _ in range(args.repeats):
                start_queue()
                with cpu_meter(server) as meter:
                    if wrk:
                        run = run_wrk(wrk, server.port, script, connections=args.connections, seconds=args.duration)
                    else:
                        run = asyncio.run(
                            _closed_loop_py(server.port, raws_for(server.port), args.connections, args.duration)
                        )
                run["cpu"] = meter.report(run["requests"])
                run["jobs_in_db_after"] = reset_jobs()
                runs.append(run)
                log(
                    f"    run: {run['jobs_per_s']} jobs/s p50 {run['p50_ms']} ms p99 {run['p99_ms']} ms; "
                    f"cores used {run['cpu']['cores_used']}"
                )
            med = sorted(runs, key=lambda r: r["jobs_per_s"])[len(runs) // 2]  # the median run
            return {**med, "jobs_per_s_all_runs": [r["jobs_per_s"] for r in runs]}

        def open_run(server: Gunicorn, rate: float, seconds: float) -> dict:
            start_queue()
            with cpu_meter(server) as meter:
                run = asyncio.run(open_loop(server.port, raws_for(server.port), rate=rate, seconds=seconds))
            run["cpu"] = meter.report(run["requests"])
            run["jobs_in_db_after"] = reset_jobs()
            log(
                f"  open loop {rate}/s: p50 {run.get('p50_ms')} ms p99 {run.get('p99_ms')} ms, "
                f"achieved {run['achieved_per_s']}/s"
            )
            return run

        closed = {}
        for workers, threads in combos:
            with Gunicorn(env.env, workers=workers, threads=threads) as server:
                log(f"closed loop {server.label}: {args.connections} connections, {args.repeats} x {args.duration}s")
                closed[server.label] = closed_run(server)
        best_label = max(closed, key=lambda k: closed[k]["jobs_per_s"])
        best_w, best_t = (int(x) for x in best_label[1:].split("xt"))
        best = closed[best_label]

        pool_off = None
        if not args.no_pool_compare:
            with Gunicorn({**env.env, "DATABASE_POOL": "false"}, workers=best_w, threads=best_t) as server:
                log(f"closed loop {server.label} with DATABASE_POOL=false")
                pool_off = closed_run(server)

        with Gunicorn(env.env, workers=best_w, threads=best_t) as server:
            log(f"open loop on {server.label}: {args.rate}/s for {args.open_duration}s (after a 2 s warm-up)")
            asyncio.run(open_loop(server.port, raws_for(server.port), rate=min(args.rate, 50), seconds=2))
            opened = open_run(server, args.rate, args.open_duration)
            sustainable = None
            rate2 = args.sustainable_rate if args.sustainable_rate >= 0 else round(best["jobs_per_s"] / 2)
            if rate2 > 0:
                sustainable = open_run(server, rate2, args.open_duration)

        breakdown = None if args.no_breakdown else server_breakdown(keys[0])

    result.update(
        {
            "best_combo": {"gunicorn": f"-w {best_w} --worker-class gthread --threads {best_t}", "database_pool": True},
            "closed_loop": {"connections": args.connections, **best},
            "closed_loop_by_combo": closed,
            "closed_loop_database_pool_off": pool_off,
            "open_loop": {"gunicorn": best_label, **opened},
            "open_loop_at_half_capacity": sustainable,
            "server_breakdown_median_ms": breakdown,
            "targets": {
                "closed_loop_jobs_per_s": target(best["jobs_per_s"], TARGET_JOBS_PER_S, higher_is_better=True),
                f"open_loop_p99_ms_at_{args.rate:g}_per_s": target(
                    opened.get("p99_ms"), TARGET_OPEN_P99_MS, higher_is_better=False
                ),
            },
            "notes": [
                "closed loop: wrk (C) with a Lua script rotating client keys; figure = median of the repeats"
                if wrk
                else "closed loop: Python asyncio generator (wrk unavailable) - it competes for the 2 cores",
                "open loop: wrk2 is not packaged here; Python asyncio raw-HTTP/1.1 keep-alive generator on a fixed "
                "schedule, latency measured from the scheduled send time (no coordinated omission)",
                f"jobs table truncated before every measured run; queue depth at start = {args.queue_depth}",
                "cpu.cores_used.other_processes_on_machine = CPU used by processes that are not this benchmark's "
                "(the machine is shared); with DATABASE_POOL=false every request opens a connection whose backend "
                "exits with it, so PostgreSQL's CPU lands there instead of in postgres_backends",
                f"rate limits {'on via Redis (very high limits)' if args.throttle else 'off'}; "
                f"{'no miner registered' if args.no_miner else 'one miner registered for ' + MODEL}",
            ],
        }
    )
    result["machine"]["loadavg_end"] = load_average()
    emit(result)


if __name__ == "__main__":
    main()
