"""Claim + complete throughput, and exactly-once checks.

1. Service layer, in-process: 16 workers, each a thread with its own registered miner and its
   own PostgreSQL connection, loop ``jobs.services.job_claim(limit=B)`` then one
   ``jobs.services.jobs_complete`` handed the claimed jobs, as the in-cluster worker does,
   against a queue pre-filled with ``--jobs`` (20,000) jobs, at each batch size B in
   ``--batches`` (1 and 10), for each of ``--layouts``: 2 OS processes of 8 worker threads (as ``rundramatiq
   --processes 2 --threads 8`` runs in-cluster workers on two cores), then 16 processes of one.
   Targets: >= 1,000 completions/s at batch 1, >= 5,000/s at batch 10.
2. HTTP: ``--http-miners`` (50) polling miners against gunicorn, each looping
   ``POST /v1/miners/poll`` (X-Miner-ID) then ``POST /v1/miners/{job_id}/result``.
   Target >= 400 completions/s.

Each phase runs until the queue is drained or for at most ``--max-seconds``; a job claimed
before the deadline is always completed. Afterwards the database is checked: no job claimed
twice (attempt > 1, or the same id handed to two workers), none lost (claimed but not
completed, or in an unexpected state), every completed job has exactly one receipt.

With ``--breakdown``, each service-layer phase also reports the worker threads' CPU per job in
the claim, the receipts, the completion statement and the status events' hand-over.

    .venv/bin/python bench/claims.py [--jobs 20000] [--batches 1,10] [--layouts 2x8,16x1] [--max-seconds 30] [--breakdown]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    MODEL,
    CpuMeter,
    bench_env,
    django_setup_from_env,
    emit,
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

TARGETS = {1: 1000, 10: 5000}
TARGET_HTTP = 400
# With --breakdown, the worker threads' CPU time (waits excluded) in these functions of
# ``jobs.services``, per completed job.
BREAKDOWN = {
    "claim: statement and rows to jobs": "_claim_postgres",
    "receipts: signing": "receipts_sign",
    "completion statement": "_store_completions",
    "status events: hand-over": "_publish_statuses",
}
RESULT = {"output": "hello there", "usage": {"prompt_tokens": 1, "completion_tokens": 2}}
METRICS = {"duration_ms": 5, "units": 3}


# --- service-layer workers ----------------------------------------------------------------


def service_worker(
    env: dict, miner_ids: list[str], batch: int, seconds: float, breakdown: bool, ready, go, results, release
) -> None:
    """One OS process running a worker loop per miner in ``miner_ids``, each in its own thread
    (with its own database connection)."""
    django_setup_from_env({**env, "DATABASE_POOL": "false"})  # one plain connection per thread
    import threading

    if breakdown:
        _time_service_functions()

    from django.db import connection

    from core.crypto.signing import coordinator_signing_key
    from miners.models import Miner

    miners = [Miner.objects.get(miner_id=m) for m in miner_ids]
    coordinator_signing_key()
    connection.close()
    connected, armed = threading.Barrier(len(miners) + 1), threading.Event()
    deadline = 0.0

    def work(miner):
        connection.ensure_connection()
        connected.wait()
        armed.wait()
        results.put({"pid": os.getpid(), **_work_loop(miner, batch, deadline)})
        release.wait(90)  # keep the backend alive until the parent has read its CPU time
        connection.close()

    threads = [threading.Thread(target=work, args=(miner,)) for miner in miners]
    for thread in threads:
        thread.start()
    connected.wait()
    ready.put(os.getpid())
    go.wait()
    deadline = time.monotonic() + seconds
    armed.set()
    for thread in threads:
        thread.join()


_thread_cpu: dict[tuple[int, str], float] = {}  # (thread, piece) -> CPU seconds; one writer per key


def _time_service_functions() -> None:
    import threading

    from jobs import services

    def timed(piece, function):
        def wrapper(*args, **kwargs):
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                key = (threading.get_ident(), piece)
                _thread_cpu[key] = _thread_cpu.get(key, 0.0) + time.thread_time() - started

        return wrapper

    for piece, name in BREAKDOWN.items():
        setattr(services, name, timed(piece, getattr(services, name)))


def _work_loop(miner, batch: int, deadline: float) -> dict:
    import threading

    from jobs.services import Outcome, job_claim, jobs_complete

    thread_cpu_start = time.thread_time()
    started = time.monotonic()
    claimed, receipts, claim_lat, complete_lat, errors = [], [], [], [], Counter()
    empty = 0
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        try:
            jobs = job_claim(miner=miner, limit=batch)
        except Exception as exc:
            errors[f"claim:{type(exc).__name__}:{exc}"[:200]] += 1
            continue
        claim_lat.append(time.monotonic() - t0)
        if not jobs:
            empty += 1
            if empty >= 3:
                break  # the queue is drained (SKIP LOCKED only hides rows for an instant)
            time.sleep(0.005)
            continue
        empty = 0
        claimed.extend(str(job.id) for job in jobs)
        t1 = time.monotonic()
        try:  # finish every claimed job, even past the deadline, as an in-cluster worker does
            outcomes = [
                Outcome(job_id=j.id, result=RESULT, metrics=METRICS, lease_token=j.lease_token, job=j) for j in jobs
            ]
            done = jobs_complete(miner=miner, outcomes=outcomes)
            receipts.extend(d.receipt.receipt_id if d.receipt else None for d in done)
        except Exception as exc:
            errors[f"complete:{type(exc).__name__}:{exc}"[:200]] += 1
        complete_lat.append((time.monotonic() - t1) / len(jobs))
    me = threading.get_ident()
    return {
        "thread_cpu": {
            "worker thread, in all": time.thread_time() - thread_cpu_start,
            **{piece: _thread_cpu.get((me, piece), 0.0) for piece in BREAKDOWN},
        },
        "miner_id": miner.miner_id,
        "started": started,
        "ended": time.monotonic(),
        "claimed": claimed,
        "receipts": receipts,
        "claim_lat": claim_lat,
        "complete_lat": complete_lat,
        "claim_calls": len(claim_lat),
        "errors": dict(errors),
    }


def run_service_phase(
    env, *, db: str, miners: list[str], processes: int, batch: int, seconds: float, breakdown: bool
) -> dict:
    """The workers (one per miner) spread over ``processes`` OS processes, a thread each."""
    ctx = mp.get_context("spawn")
    ready, results, go, release = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Event()
    procs = [
        ctx.Process(
            target=service_worker,
            args=(env.env, miners[i::processes], batch, seconds, breakdown, ready, go, results, release),
        )
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    pids = [ready.get(timeout=120) for _ in procs]
    log(f"  {len(pids)} worker processes ready; go")
    meter = CpuMeter({"workers": lambda: pids, "postgres_backends": lambda: pg_backend_pids(db)})
    with meter:
        t_go = time.monotonic()
        go.set()
        reports = [results.get(timeout=seconds + 300) for _ in miners]
    release.set()
    for p in procs:
        p.join(timeout=30)
    elapsed = max(r["ended"] for r in reports) - t_go
    completed = sum(1 for r in reports for x in r["receipts"] if x)
    out = {
        "workers": len(miners),
        "processes": processes,
        "threads_per_process": len(miners) // processes,
        "batch": batch,
        "seconds": round(elapsed, 2),
        "completed": completed,
        "completions_per_s": round(completed / elapsed, 1),
        "claim_calls": sum(r["claim_calls"] for r in reports),
        "claim_latency": latency_summary_ms([x for r in reports for x in r["claim_lat"]]),
        "complete_latency": latency_summary_ms([x for r in reports for x in r["complete_lat"]]),
        "errors": dict(sum((Counter(r["errors"]) for r in reports), Counter())),
        "cpu": meter.report(completed),
    }
    if breakdown and completed:
        out["worker_thread_cpu_ms_per_job"] = {
            piece: round(1000 * sum(r["thread_cpu"][piece] for r in reports) / completed, 3)
            for piece in reports[0]["thread_cpu"]
        }
    return out, reports


# --- HTTP miners --------------------------------------------------------------------------


async def http_miners(port: int, miners: list[tuple[str, str]], seconds: float, poll_wait: float) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    claimed, receipts, poll_lat, result_lat, statuses = [], [], [], [], Counter()
    ended = []

    async def miner(key: str, miner_id: str):
        conn = AsyncConn(port)
        headers = {"X-Api-Key": key, "X-Miner-ID": miner_id}
        poll = build_request(port, "POST", "/v1/miners/poll", headers, {"max_wait_seconds": poll_wait})
        empties = 0
        while loop.time() < deadline:
            t0 = loop.time()
            status, body = await conn.request(poll)
            poll_lat.append(loop.time() - t0)
            statuses[f"poll {status}"] += 1
            if status == 204:
                empties += 1
                if empties >= 2:
                    break
                continue
            if status != 200:
                await asyncio.sleep(0.05)
                continue
            empties = 0
            job = json.loads(body)
            claimed.append(job["job_id"])
            raw = build_request(
                port,
                "POST",
                f"/v1/miners/{job['job_id']}/result",
                headers,
                {"result": RESULT, "metrics": METRICS, "lease_token": job.get("lease_token", "")},
            )
            t1 = loop.time()
            status, body = await conn.request(raw)
            result_lat.append(loop.time() - t1)
            statuses[f"result {status}"] += 1
            if status == 200:
                receipts.append((json.loads(body).get("receipt") or {}).get("receipt_id"))
        ended.append(loop.time())
        conn.close()

    t_start = loop.time()
    await asyncio.gather(*(miner(k, m) for k, m in miners))
    elapsed = max(ended) - t_start
    completed = sum(1 for r in receipts if r)
    return {
        "miners": len(miners),
        "seconds": round(elapsed, 2),
        "completed": completed,
        "completions_per_s": round(completed / elapsed, 1),
        "statuses": dict(statuses),
        "poll_latency": latency_summary_ms(poll_lat),
        "result_latency": latency_summary_ms(result_lat),
        "_claimed": claimed,
        "_receipts": receipts,
    }


# --- verification -------------------------------------------------------------------------


def verify(env, *, filled: int, claimed_lists: list[list[str]], receipt_ids: list[str | None]) -> dict:
    from jobs.models import Job, Receipt

    jobs, receipts = Job._meta.db_table, Receipt._meta.db_table
    all_claimed = [j for lst in claimed_lists for j in lst]
    handed_twice = sum(n - 1 for n in Counter(all_claimed).values() if n > 1)
    with env.psql_connect() as conn:
        by_status = dict(conn.execute(f"SELECT status, count(*) FROM {jobs} GROUP BY status").fetchall())
        attempts_gt1 = conn.execute(f"SELECT count(*) FROM {jobs} WHERE attempt > 1").fetchone()[0]
        dup_receipts = conn.execute(
            f"SELECT count(*) FROM (SELECT job_id FROM {receipts} GROUP BY job_id HAVING count(*) > 1) d"
        ).fetchone()[0]
        completed_without_receipt = conn.execute(
            f"SELECT count(*) FROM {jobs} j WHERE status = 'completed' AND NOT EXISTS "
            f"(SELECT 1 FROM {receipts} r WHERE r.job_id = j.id)"
        ).fetchone()[0]
        total_receipts = conn.execute(f"SELECT count(*) FROM {receipts}").fetchone()[0]
        claimed_set = list(set(all_claimed))
        not_completed = (
            conn.execute(
                f"SELECT count(*) FROM {jobs} WHERE id = ANY(%s::uuid[]) AND status <> 'completed'", [claimed_set]
            ).fetchone()[0]
            if claimed_set
            else 0
        )
    total = sum(by_status.values())
    completed = by_status.get("completed", 0)
    unexpected = {s: n for s, n in by_status.items() if s not in ("completed", "queued")}
    returned_receipts = [r for r in receipt_ids if r]
    lost = not_completed + sum(unexpected.values()) + max(0, filled - total)
    return {
        "jobs_filled": filled,
        "jobs_by_status": by_status,
        "double_claims": handed_twice + attempts_gt1,
        "double_claims_detail": {"same_id_handed_out_twice": handed_twice, "jobs_with_attempt_gt_1": attempts_gt1},
        "lost_jobs": lost,
        "lost_detail": {
            "claimed_but_not_completed": not_completed,
            "in_unexpected_state": unexpected,
            "missing_rows": max(0, filled - total),
        },
        "receipts": {
            "in_db": total_receipts,
            "returned_to_miners": len(returned_receipts),
            "distinct_returned": len(set(returned_receipts)),
            "jobs_with_more_than_one": dup_receipts,
            "completed_jobs_without_one": completed_without_receipt,
        },
        "exactly_once": (
            handed_twice == 0
            and attempts_gt1 == 0
            and lost == 0
            and dup_receipts == 0
            and completed_without_receipt == 0
            and total_receipts
            == completed
            == len(returned_receipts)
            == len(set(returned_receipts))
            == len(set(all_claimed))
        ),
    }


def reset_jobs() -> None:
    from django.db import connection

    from jobs.models import Job, Receipt

    with connection.cursor() as cursor:
        # CASCADE: attestations, payments and ledger transactions point at receipts and jobs.
        cursor.execute(f"TRUNCATE {Receipt._meta.db_table}, {Job._meta.db_table} CASCADE")
    connection.close()


def fill(n: int) -> dict:
    reset_jobs()
    t0 = time.monotonic()
    made = prefill_jobs(n)
    from django.db import connection

    connection.close()
    log(f"  queued {made} jobs in {time.monotonic() - t0:.1f}s")
    return {"jobs": made}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20000, help="jobs queued before each service-layer phase")
    parser.add_argument(
        "--layouts",
        default="2x8,16x1",
        help="PROCESSESxTHREADS of the service-layer workers, one phase per layout and batch (16 workers each "
        "by default: 2 processes of 8 threads, then 16 processes of one)",
    )
    parser.add_argument("--batches", default="1,10")
    parser.add_argument("--max-seconds", type=float, default=30, help="time cap per phase")
    parser.add_argument("--http-miners", type=int, default=50)
    parser.add_argument("--http-jobs", type=int, default=20000)
    parser.add_argument("--http-poll-wait", type=float, default=0, help="max_wait_seconds sent with each poll")
    parser.add_argument("--gunicorn", default="2x8", help="WORKERSxTHREADS for the HTTP phase")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="time the worker threads' CPU in the claim, receipts, completion statement and event hand-over",
    )
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument("--db", default="aitbc_bench")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",") if b]
    layouts = [tuple(int(x) for x in layout.lower().split("x")) for layout in args.layouts.split(",") if layout]
    most_workers = max(p * t for p, t in layouts) if layouts else 0

    result: dict = {"benchmark": "claims", "machine": {"cpus": os.cpu_count(), "loadavg_start": load_average()}}
    with bench_env(args.db, keep_db=args.keep_db) as env:
        env.django_setup()
        miners = [
            make_miner(f"bench-owner-{i % 4}", f"bench-miner-{i}", max_concurrent_jobs=1024).miner_id
            for i in range(max(most_workers, args.http_miners))
        ]
        from django.db import connection

        connection.close()

        if not args.skip_service:
            service = {}
            for (processes, threads), batch in [(layout, batch) for layout in layouts for batch in batches]:
                name = f"{processes}x{threads}_batch_{batch}"
                log(f"service layer, {processes} processes x {threads} threads, batch {batch}")
                filled = fill(args.jobs)["jobs"]
                phase, reports = run_service_phase(
                    env,
                    db=args.db,
                    miners=miners[: processes * threads],
                    processes=processes,
                    batch=batch,
                    seconds=args.max_seconds,
                    breakdown=args.breakdown,
                )
                phase["queue_depth_at_start"] = filled
                phase["checks"] = verify(
                    env,
                    filled=filled,
                    claimed_lists=[r["claimed"] for r in reports],
                    receipt_ids=[x for r in reports for x in r["receipts"]],
                )
                phase["target"] = target(
                    phase["completions_per_s"], TARGETS.get(batch, TARGETS[10]), higher_is_better=True
                )
                log(
                    f"  {name}: {phase['completions_per_s']}/s ({phase['completed']} in {phase['seconds']}s); "
                    f"claim p50 {phase['claim_latency'].get('p50_ms')} ms; "
                    f"double claims {phase['checks']['double_claims']}, lost {phase['checks']['lost_jobs']}"
                )
                service[name] = phase
            result["service_layer"] = service

        if not args.skip_http:
            w, t = (int(x) for x in args.gunicorn.lower().split("x"))
            owners = {}
            http_miner_ids = miners[: args.http_miners]
            for mid in http_miner_ids:
                owner = f"bench-owner-{int(mid.rsplit('-', 1)[1]) % 4}"
                if owner not in owners:
                    owners[owner] = make_key(owner, "miner")
            connection.close()
            pairs = [(owners[f"bench-owner-{int(m.rsplit('-', 1)[1]) % 4}"], m) for m in http_miner_ids]
            log(f"HTTP: {len(pairs)} polling miners against gunicorn {args.gunicorn}")
            filled = fill(args.http_jobs)["jobs"]
            with Gunicorn(env.env, workers=w, threads=t) as server:
                meter = CpuMeter(
                    {
                        "gunicorn": lambda: [server.proc.pid, *server.worker_pids()],
                        "postgres_backends": lambda: pg_backend_pids(args.db),
                        "bench_process (load generator)": lambda: [os.getpid()],
                    }
                )
                with meter:
                    http = asyncio.run(http_miners(server.port, pairs, args.max_seconds, args.http_poll_wait))
            claimed, receipts = http.pop("_claimed"), http.pop("_receipts")
            http["gunicorn"] = f"-w {w} --worker-class gthread --threads {t}"
            http["queue_depth_at_start"] = filled
            http["cpu"] = meter.report(http["completed"])
            http["checks"] = verify(env, filled=filled, claimed_lists=[claimed], receipt_ids=receipts)
            http["target"] = target(http["completions_per_s"], TARGET_HTTP, higher_is_better=True)
            log(
                f"  HTTP: {http['completions_per_s']}/s; double claims {http['checks']['double_claims']}, "
                f"lost {http['checks']['lost_jobs']}"
            )
            result["http"] = http

    result["targets"] = {}
    for name, phase in result.get("service_layer", {}).items():
        if "target" in phase:
            result["targets"][f"service_{name}_per_s"] = phase["target"]
    if "http" in result:
        result["targets"]["http_50_miners_per_s"] = result["http"]["target"]
    phases = list(result.get("service_layer", {}).values()) + ([result["http"]] if "http" in result else [])
    result["double_claims_total"] = sum(p["checks"]["double_claims"] for p in phases)
    result["lost_jobs_total"] = sum(p["checks"]["lost_jobs"] for p in phases)
    result["all_exactly_once"] = all(p["checks"]["exactly_once"] for p in phases)
    result["notes"] = [
        "throughput = completed jobs / time from the start signal until the last worker stopped; a phase "
        "stops when the queue is drained or at --max-seconds (jobs still queued then are not lost)",
        "service-layer workers: PROCESSESxTHREADS per phase name, each worker a thread with its own miner and "
        "its own database connection (DATABASE_POOL=false) in OS processes started with spawn",
        f"every miner serves {MODEL}; miners have max_concurrent_jobs=1024",
    ]
    result["machine"]["loadavg_end"] = load_average()
    emit(result)


if __name__ == "__main__":
    main()
