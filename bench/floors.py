"""What the claim path cannot go below on this machine: the database, HTTP and receipt floors.

1. Database: ``pgbench`` (a C client, so nearly all the CPU is PostgreSQL's) runs the service's
   own statements, ``jobs.sql.CLAIM`` then ``jobs.sql.COMPLETE``, from 16 clients, each with its
   own miner, at batch 1 and batch 10, for ``--seconds`` each, on a queue of ``--jobs`` jobs
   that must not run dry.
   The completion's rows, which the service sends as one JSON parameter, are built in SQL from
   the claimed ids, with a receipt-sized ``signed_json``. Reports claim + complete per second,
   PostgreSQL's CPU per job and the rate PostgreSQL alone could serve on every core.
2. HTTP: gunicorn (``--gunicorn`` 2x8, as ``claims.py``) answering ``GET /health/live`` (the
   middleware, URL routing and a DRF view, no database) to 50 keep-alive clients: Django's CPU
   per request before any work. A miner's poll + result cycle is two requests.
3. Receipt: signing one receipt in-process (``jobs.receipts.receipts_sign``: canonical JSON
   of payload, result and document, Ed25519), and the Ed25519 signature alone.

Then, for each target of ``claims.py``, the CPU per job left to the service's Python once
PostgreSQL has had its share on this machine's cores.

    .venv/bin/python bench/floors.py [--jobs 120000] [--seconds 8] [--gunicorn 2x8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    PG_HOST,
    PG_PORT,
    PG_USER,
    CpuMeter,
    bench_env,
    emit,
    load_average,
    log,
    make_miner,
    pg_backend_pids,
    prefill_jobs,
)

from aitbc_site.testing.http import AsyncConn, build_request
from aitbc_site.testing.processes import Gunicorn

CLIENTS = 16
HTTP_CLIENTS = 50
TARGETS = {"batch_1": (1, 1000), "batch_10": (10, 5000)}
TARGET_HTTP = 400
RESULT_JSON = '{"output":"hello there","usage":{"prompt_tokens":1,"completion_tokens":2}}'
USAGE_JSON = '{"units":3,"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"compute_ms":5}'


def pgbench_script(*, batch: int, first_miner_pk: int, signed_json_length: int) -> str:
    """``jobs.sql.CLAIM`` and ``jobs.sql.COMPLETE`` as a pgbench script: psycopg's named
    parameters become pgbench variables or SQL expressions, the statements are otherwise the
    service's own."""
    from django.conf import settings

    from jobs import sql

    claim = sql.CLAIM
    for name, value in {
        "miner": ":miner",
        "limit": str(batch),
        "job_id": "NULL",
        "models": "NULL",
        "now": "now()",
        "lease_until": "now() + interval '60 seconds'",
        "headstart": repr(float(settings.MATCHING_REPUTATION_HEADSTART_SECONDS)),
    }.items():
        claim = claim.replace(f"%({name})s", value)
    rows = (
        "(SELECT jsonb_agg(jsonb_build_object('id', i, 'fence', f, 'payment_id', NULL, "
        f"'result', '{RESULT_JSON}'::jsonb, 'usage', '{USAGE_JSON}'::jsonb, "
        "'receipt_id', 'rcpt_' || replace(i::text, '-', ''), "
        f"'signed_json', repeat('x', {signed_json_length}))) "
        "FROM unnest(string_to_array(:ids, ',')::uuid[], string_to_array(:fences, ',')) AS x(i, f))"
    )
    complete = sql.COMPLETE.replace("%(rows)s", rows).replace("%(miner)s", ":miner").replace("%(now)s", "now()")
    leftover = re.findall(r"%\(\w+\)s", claim + complete)
    if leftover:
        raise RuntimeError(f"parameters not translated for pgbench: {leftover}")
    return (
        f"\\set miner :client_id + {first_miner_pk}\n"
        f"SELECT coalesce(string_agg(id::text, ','), '') AS ids, coalesce(string_agg(lease_token, ','), '') "
        f"AS fences FROM ({_one_line(claim)}) AS claimed \\gset\n"
        f"{_one_line(complete)};\n"
    )


def _one_line(statement: str) -> str:
    return " ".join(statement.split())  # pgbench reads one command per line


def pgbench_phase(env, script: str, *, batch: int, seconds: float) -> dict:
    """Run ``script`` and measure, between two counts of the completed jobs, PostgreSQL's CPU per
    job completed."""
    db = env.db_name
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
    command = [
        shutil.which("pgbench") or "pgbench", "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER, "-n",
        "-M", "prepared", "-c", str(CLIENTS), "-j", "2", "-T", str(int(seconds)), "-f", f.name, db,
    ]  # fmt: skip
    completed_and_queued = (
        "SELECT count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'queued') FROM jobs_job"
    )
    with env.psql_connect() as counter:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1.0)  # connected: measure the steady state
        meter = CpuMeter({"postgres_backends": lambda: pg_backend_pids(db), "pgbench": lambda: [proc.pid]})
        with meter:
            before = counter.execute(completed_and_queued).fetchone()[0]
            time.sleep(max(1.0, seconds - 2))
            after, queued = counter.execute(completed_and_queued).fetchone()
        output = proc.communicate()[0]
    os.unlink(f.name)
    if proc.returncode != 0 or "aborted" in output:
        raise RuntimeError(f"pgbench failed:\n{output[-2000:]}")
    if not queued:
        raise RuntimeError("the queue ran dry during the measurement: raise --jobs")
    jobs = after - before
    pg_ms = round(1000 * meter.used["postgres_backends"] / jobs, 3)
    return {
        "clients": CLIENTS,
        "batch": batch,
        "jobs_per_s": round(jobs / meter.elapsed),
        "postgres_cpu_ms_per_job": pg_ms,
        "postgres_alone_on_all_cores_jobs_per_s": round((os.cpu_count() or 1) * 1000 / pg_ms),
        "cpu": meter.report(jobs),
    }


def reset_queue(n: int) -> None:
    from django.db import connection

    from jobs.models import Job, Receipt

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {Receipt._meta.db_table}, {Job._meta.db_table} CASCADE")
    prefill_jobs(n)
    connection.close()


def receipt_floor() -> dict:
    """µs to sign one receipt for a completed job, and for the Ed25519 signature alone."""
    import copy

    from django.utils import timezone

    from core.crypto.signing import coordinator_signing_key
    from jobs.models import Job, JobStatus
    from jobs.receipts import receipts_sign

    key = coordinator_signing_key()
    job = Job.objects.first()
    job.status, job.completed_at, job.started_at = JobStatus.COMPLETED, timezone.now(), timezone.now()
    job.result, job.usage = {"output": "hello there"}, {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    jobs = [(copy.copy(job), "bench-miner", job.price) for _ in range(100)]
    message = receipts_sign(completed=jobs[:1])[0].signed_json.encode()
    runs = 20
    sign_receipts = min(timeit.repeat(lambda: receipts_sign(completed=jobs), number=1, repeat=runs)) / len(jobs)
    sign_alone = min(timeit.repeat(lambda: key.sign(message), number=200, repeat=runs)) / 200
    return {
        "receipt_us": round(sign_receipts * 1e6, 1),
        "ed25519_sign_us": round(sign_alone * 1e6, 1),
        "signed_json_bytes": len(message),
    }


async def health_clients(port: int, seconds: float) -> int:
    loop = asyncio.get_running_loop()
    deadline, done = loop.time() + seconds, 0

    async def client():
        nonlocal done
        conn, raw = AsyncConn(port), build_request(port, "GET", "/health/live")
        while loop.time() < deadline:
            status, _ = await conn.request(raw)
            done += status == 200
        conn.close()

    await asyncio.gather(*(client() for _ in range(HTTP_CLIENTS)))
    return done


def http_floor(env, *, workers: int, threads: int, seconds: float) -> dict:
    with Gunicorn(env.env, workers=workers, threads=threads) as server:
        asyncio.run(health_clients(server.port, 1.0))  # warm every worker
        meter = CpuMeter({"gunicorn": lambda: [server.proc.pid, *server.worker_pids()]})
        with meter:
            done = asyncio.run(health_clients(server.port, seconds))
    return {
        "gunicorn": f"-w {workers} --worker-class gthread --threads {threads}",
        "clients": HTTP_CLIENTS,
        "requests_per_s": round(done / meter.elapsed),
        "gunicorn_cpu_ms_per_request": round(1000 * meter.used["gunicorn"] / done, 3),
        "cpu": meter.report(done),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=120000, help="jobs queued before each database phase")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--gunicorn", default="2x8", help="WORKERSxTHREADS for the HTTP floor")
    parser.add_argument("--db", default="aitbc_floors")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()
    if not shutil.which("pgbench"):
        sys.exit("pgbench is needed (Debian: postgresql-client)")
    cores = os.cpu_count() or 1
    result: dict = {"benchmark": "floors", "machine": {"cpus": cores, "loadavg_start": load_average()}}
    with bench_env(args.db, keep_db=args.keep_db) as env:
        env.django_setup(DATABASE_POOL="false")
        miners = [make_miner(f"bench-owner-{i % 4}", f"bench-miner-{i}") for i in range(CLIENTS)]
        reset_queue(args.jobs)
        receipt = receipt_floor()
        result["receipt"] = receipt
        log(f"receipt: {receipt['receipt_us']} µs, of which Ed25519 {receipt['ed25519_sign_us']} µs")

        database = {}
        for name, (batch, _) in TARGETS.items():
            reset_queue(args.jobs)
            script = pgbench_script(
                batch=batch, first_miner_pk=miners[0].pk, signed_json_length=receipt["signed_json_bytes"]
            )
            database[name] = pgbench_phase(env, script, batch=batch, seconds=args.seconds)
            log(f"database, {name}: {database[name]['jobs_per_s']} jobs/s, "
                f"PostgreSQL {database[name]['postgres_cpu_ms_per_job']} ms per job")  # fmt: skip
        result["database"] = database

        workers, threads = (int(x) for x in args.gunicorn.lower().split("x"))
        http = http_floor(env, workers=workers, threads=threads, seconds=args.seconds)
        log(f"HTTP floor: {http['requests_per_s']}/s, {http['gunicorn_cpu_ms_per_request']} ms per request")
        result["http"] = http

    budgets = {}
    for name, (_, goal) in TARGETS.items():
        pg_ms = database[name]["postgres_cpu_ms_per_job"]
        budgets[f"service_{name}_at_{goal}_per_s"] = {
            "cpu_ms_per_job_on_all_cores": round(cores * 1000 / goal, 3),
            "postgres_ms_per_job": pg_ms,
            "left_for_python_ms_per_job": round(cores * 1000 / goal - pg_ms, 3),
        }
    budgets[f"http_at_{TARGET_HTTP}_per_s"] = {
        "cpu_ms_per_cycle_on_all_cores": round(cores * 1000 / TARGET_HTTP, 3),
        "two_bare_requests_ms": round(2 * http["gunicorn_cpu_ms_per_request"], 3),
        "postgres_ms_per_job_batch_1": database["batch_1"]["postgres_cpu_ms_per_job"],
    }
    result["budgets"] = budgets
    result["notes"] = [
        "database: pgbench's own CPU is reported apart; the completion's rows are built in SQL, where the "
        "service sends them as one JSON parameter",
        "left_for_python: what the service's worker may spend per job (rows to instances, receipt, events, "
        "driver) for the target to fit on this machine's cores beside PostgreSQL",
        "http: a bare DRF view behind the full middleware; the poll + result cycle adds authentication, "
        "request parsing, the claim and the completion to two such requests",
    ]
    result["machine"]["loadavg_end"] = load_average()
    emit(result)


if __name__ == "__main__":
    main()
