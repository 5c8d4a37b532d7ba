"""Block sealing throughput on PostgreSQL, against the completion rates the claims benchmark reaches.

A paid job's completion leaves three items to seal: its receipt, its escrow hold and its
settlement (two ledger transactions); a free job leaves its receipt. One paid job goes through
the real path (``job_submit`` with a payment, ``job_claim``, ``jobs_complete``) and is the
template: the benchmark then writes copies of it in SQL (fresh job and receipt ids and business
keys, the receipt's bytes and the ledger entries as the template's), so what is sealed has the
size and shape of production's, written fast.

1. History: ``--history`` (50,000) paid jobs' worth, their times spread over the past at
   ``--history-rate`` (1,000 jobs/s), sealed untimed: the tables and indexes sealing reads and
   writes are not empty ones.
2. Backlog: ``--backlog`` (20,000) paid jobs' worth (60,000 leaves) waiting at once;
   housekeeping runs (``explorer.tasks.seal_block``'s body, ``blocks_seal_pending``) one after
   another until nothing waits. Reported: leaves/s, each run's seconds and leaves, the CPU of
   this process and of PostgreSQL per leaf.
3. Intervals: for each rate in ``--rates`` (1,000 and 3,000 jobs/s, the claims benchmark at
   batch 1 and batch 10), ``--intervals`` (3) times: one ``HOUSEKEEPING_INTERVAL_SECONDS`` (5 s)
   of paid completions at that rate is written, then one housekeeping run seals it. Sealing
   keeps up when that run takes less than the interval; the share of the interval it takes is
   the share of a core sealing needs at that rate.

Then the checks: nothing waits, every item is sealed exactly once, and ``verify_chain``'s check
passes over the blocks sealed after the history. With ``--profile``, the backlog's runs are
profiled (cProfile, top functions by cumulative time in the JSON).

    .venv/bin/python bench/sealing.py [--history 50000] [--history-rate 1000] [--backlog 20000]
        [--rates 1000,3000] [--intervals 3] [--profile] [--db aitbc_bench]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MODEL, CpuMeter, bench_env, emit, load_average, log, make_miner, pg_backend_pids, target

# The completion rates of bench/claims.py on the 2-core development machine (bench/README.md).
CLAIM_RATES = {1000: "claims at batch 1", 3000: "claims at batch 10"}
PAYLOAD = {"type": "inference", "prompt": "What is the capital of France?", "model": MODEL}
RESULT = {"text": "The capital of France is Paris.", "finish_reason": "stop"}
METRICS = {"duration_ms": 40, "units": 9}
CHUNK = 5000


# --- the template and its copies ---------------------------------------------------------------


def make_template():
    """One paid job through the real path: its job row, receipt and ledger transactions are copied."""
    from accounts.services import user_get_or_create
    from jobs.services import Outcome, job_claim, job_submit, jobs_complete
    from payments.services import treasury_mint, wallet_open

    client = user_get_or_create(username="bench-sealing-client")
    treasury_mint(wallet=wallet_open(user=client), amount=Decimal(1000))
    miner = make_miner("bench-sealing-owner", "bench-sealing-miner")
    job = job_submit(client=client, model=MODEL, payload=dict(PAYLOAD), payment_amount=Decimal(1)).job
    (claimed,) = job_claim(miner=miner, limit=1, job_id=job.pk)
    outcome = Outcome(job_id=claimed.pk, result=RESULT, metrics=METRICS, lease_token=claimed.lease_token, job=claimed)
    (done,) = jobs_complete(miner=miner, outcomes=[outcome])
    return done.job, done.receipt


def copy_completions(template_job, template_receipt, *, count: int, start, step_s: float) -> None:
    """``count`` copies of the template's completion, the n-th at ``start + n * step_s``, in chunks
    of one transaction each (the ledger's balance trigger checks every transaction at commit)."""
    from django.db import connection, transaction

    from jobs.models import Job

    fields = [f.column for f in Job._meta.concrete_fields]
    timed = {"created_at", "started_at", "completed_at", "updated_at", "rank_at", "expires_at"}
    select = ", ".join(
        "src.id" if column == "id" else f"src.at + (t.{column} - t.created_at)" if column in timed else f"t.{column}"
        for column in fields
    )
    job_text, receipt_id = str(template_job.pk), template_receipt.receipt_id
    statement = f"""
    WITH src AS (
        SELECT gen_random_uuid() AS id, %(start)s::timestamptz + (g * %(step)s::float8) * interval '1 second' AS at
        FROM generate_series(%(first)s::int, %(last)s::int) g
    ), jobs AS (
        INSERT INTO jobs_job ({", ".join(f'"{c}"' for c in fields)})
        SELECT {select} FROM src, jobs_job t WHERE t.id = %(job)s
        RETURNING id, completed_at
    ), receipts AS (
        INSERT INTO jobs_receipt (receipt_id, job_id, signed_json, created_at)
        SELECT 'rcpt_' || replace(jobs.id::text, '-', ''), jobs.id,
               replace(replace(r.signed_json, %(receipt_id)s, 'rcpt_' || replace(jobs.id::text, '-', '')),
                       %(job_text)s, jobs.id::text),
               jobs.completed_at
        FROM jobs, jobs_receipt r WHERE r.receipt_id = %(receipt_id)s
        RETURNING 1
    ), txs AS (
        INSERT INTO payments_ledgertransaction (business_key, kind, job_id, memo, created_at)
        SELECT replace(tt.business_key, %(job_text)s, jobs.id::text), tt.kind, jobs.id,
               replace(tt.memo, %(job_text)s, jobs.id::text), jobs.completed_at + (tt.created_at - tj.completed_at)
        FROM jobs, payments_ledgertransaction tt, jobs_job tj
        WHERE tt.job_id = %(job)s AND tj.id = %(job)s
        ORDER BY jobs.completed_at, tt.id
        RETURNING id, kind
    ), entries AS (
        INSERT INTO payments_ledgerentry (transaction_id, wallet_id, amount)
        SELECT txs.id, e.wallet_id, e.amount
        FROM txs JOIN payments_ledgertransaction tt ON tt.job_id = %(job)s AND tt.kind = txs.kind
        JOIN payments_ledgerentry e ON e.transaction_id = tt.id
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM receipts), (SELECT count(*) FROM txs), (SELECT count(*) FROM entries)
    """
    made = 0
    while made < count:
        n = min(CHUNK, count - made)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                statement,
                {
                    "start": start,
                    "step": step_s,
                    "first": made,
                    "last": made + n - 1,
                    "job": template_job.pk,
                    "job_text": job_text,
                    "receipt_id": receipt_id,
                },
            )
        made += n


def leaves_per_job(template_job) -> int:
    from payments.models import LedgerTransaction

    return 1 + LedgerTransaction.objects.filter(job=template_job).count()


def unsealed() -> int:
    """Items no block holds yet, counted in SQL here (not through the code under test)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT (SELECT count(*) FROM jobs_receipt r WHERE NOT EXISTS (
                        SELECT 1 FROM explorer_blockleaf l WHERE l.kind = 'receipt' AND l.ref = r.receipt_id))
                 + (SELECT count(*) FROM payments_ledgertransaction t WHERE NOT EXISTS (
                        SELECT 1 FROM explorer_blockleaf l WHERE l.kind = 'transaction' AND l.ref = t.id::text))
            """
        )
        return cursor.fetchone()[0]


def analyze() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for table in (
            "jobs_receipt",
            "explorer_blockleaf",
            "explorer_pendingleaf",
            "payments_ledgertransaction",
            "payments_ledgerentry",
        ):
            cursor.execute(f"ANALYZE {table}")


# --- sealing -------------------------------------------------------------------------------------


def housekeeping_run() -> tuple[float, int, int]:
    """One run of the sealing actor's body: (seconds, blocks, leaves)."""
    from explorer import services

    t0 = time.perf_counter()
    blocks = services.blocks_seal_pending()
    return time.perf_counter() - t0, len(blocks), sum(block.tx_count for block in blocks)


def seal_everything(max_runs: int = 10_000) -> list[tuple[float, int, int]]:
    runs = []
    for _ in range(max_runs):
        run = housekeeping_run()
        runs.append(run)
        if run[2] == 0 and not unsealed():
            break
    return runs


def runs_summary(runs: list[tuple[float, int, int]]) -> dict:
    seconds = [s for s, _, _ in runs]
    leaves = sum(n for _, _, n in runs)
    return {
        "runs": len(runs),
        "blocks": sum(b for _, b, _ in runs),
        "leaves": leaves,
        "seconds": round(sum(seconds), 3),
        "leaves_per_s": round(leaves / sum(seconds), 1) if sum(seconds) else None,
        "run_seconds_max": round(max(seconds), 3) if seconds else None,
        "run_seconds_median": round(statistics.median(seconds), 3) if seconds else None,
    }


def profiled(work) -> tuple[object, list[str]]:
    profile = cProfile.Profile()
    value = profile.runcall(work)
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(25)
    lines = [line.rstrip() for line in out.getvalue().splitlines() if line.strip()]
    return value, lines[-27:]


# --- phases --------------------------------------------------------------------------------------


def history_phase(args, template_job, template_receipt, per_job: int) -> dict:
    from django.utils import timezone

    seconds = args.history / args.history_rate
    start = timezone.now() - timedelta(seconds=seconds)
    log(f"history: {args.history} paid jobs' worth over the last {seconds:.0f} s ({args.history * per_job} leaves)")
    t0 = time.perf_counter()
    copy_completions(template_job, template_receipt, count=args.history, start=start, step_s=1 / args.history_rate)
    written_s = time.perf_counter() - t0
    analyze()
    log(f"  written in {written_s:.1f}s; sealing it (untimed)")
    runs = seal_everything()
    analyze()
    summary = runs_summary(runs)
    log(f"  sealed {summary['leaves']} leaves in {summary['seconds']}s")
    return {"jobs": args.history, "written_seconds": round(written_s, 1), "sealed": summary}


def backlog_phase(args, template_job, template_receipt, per_job: int, db: str) -> dict:
    from django.utils import timezone

    # Completions of the last few seconds: inside the look-back window, after the history.
    log(f"backlog: {args.backlog} paid jobs' worth waiting at once ({args.backlog * per_job} leaves)")
    step = 1 / max(args.rates)
    copy_completions(template_job, template_receipt, count=args.backlog, start=timezone.now(), step_s=step)
    analyze()
    waiting = unsealed()
    meter = CpuMeter({"bench_process": lambda: [os.getpid()], "postgres_backends": lambda: pg_backend_pids(db)})
    profile_lines = None
    with meter:
        if args.profile:
            runs, profile_lines = profiled(seal_everything)
        else:
            runs = seal_everything()
    summary = runs_summary(runs)
    cpu = meter.report()
    leaves = summary["leaves"] or 1
    summary["cpu_ms_per_1000_leaves"] = {name: round(1e6 * sec / leaves, 1) for name, sec in meter.used.items()}
    log(f"  sealed {summary['leaves']} of {waiting} leaves: {summary['leaves_per_s']} leaves/s")
    result = {"waiting": waiting, "sealed": summary, "cpu": cpu, "run_seconds": [round(s, 3) for s, _, _ in runs]}
    if profile_lines:
        result["profile_top_cumulative"] = profile_lines
    return result


def interval_phase(args, template_job, template_receipt, per_job: int, rate: int, interval: float) -> dict:
    from django.utils import timezone

    jobs = int(rate * interval)
    log(f"intervals at {rate} jobs/s: {args.intervals} x {jobs} paid jobs' worth ({jobs * per_job} leaves) each")
    runs = []
    for _ in range(args.intervals):
        copy_completions(template_job, template_receipt, count=jobs, start=timezone.now(), step_s=1 / rate)
        runs.append(housekeeping_run())
    seconds = [s for s, _, _ in runs]
    leaves = [n for _, _, n in runs]
    median_s = statistics.median(seconds)
    log(f"  runs took {[round(s, 2) for s in seconds]} s for {leaves} leaves; interval {interval} s")
    return {
        "rate_jobs_per_s": rate,
        "what": CLAIM_RATES.get(rate, "--rates"),
        "leaves_per_interval": jobs * per_job,
        "runs": [{"seconds": round(s, 3), "blocks": b, "leaves": n} for s, b, n in runs],
        "leaves_per_s": round(sum(leaves) / sum(seconds), 1) if sum(seconds) else None,
        "share_of_a_core": round(median_s / interval, 3),
        "keeps_up": target(round(median_s, 3), interval, higher_is_better=False),
        "all_sealed_each_run": all(n == jobs * per_job for n in leaves),
    }


def checks(first_height: int) -> dict:
    from explorer import selectors
    from explorer.models import Block, BlockLeaf

    log("checks: nothing waits, nothing sealed twice, the new blocks verify")
    leaves = BlockLeaf.objects.count()
    distinct = BlockLeaf.objects.values("kind", "ref").distinct().count()
    problems = []
    for block in Block.objects.filter(height__gte=first_height).prefetch_related("leaves").order_by("height"):
        problems += selectors._leaf_problems(block)
    return {
        "unsealed_left": unsealed(),
        "leaves": leaves,
        "sealed_twice": leaves - distinct,
        "verify_problems_in_new_blocks": len(problems),
        "first_problems": problems[:5],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history", type=int, default=50000, help="paid jobs' worth sealed before the timed phases")
    parser.add_argument("--history-rate", type=float, default=1000, help="paid jobs/s of the history")
    parser.add_argument("--backlog", type=int, default=20000, help="paid jobs' worth waiting at once")
    parser.add_argument("--rates", default="1000,3000", help="completion rates (jobs/s) of the interval phase")
    parser.add_argument("--intervals", type=int, default=3, help="housekeeping intervals per rate")
    parser.add_argument("--profile", action="store_true", help="cProfile the backlog's runs")
    parser.add_argument("--db", default="aitbc_bench")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()
    args.rates = [int(rate) for rate in args.rates.split(",") if rate]

    result: dict = {"benchmark": "sealing", "machine": {"cpus": os.cpu_count(), "loadavg_start": load_average()}}
    with bench_env(args.db, keep_db=args.keep_db, pool=False) as env:
        env.django_setup()
        from django.conf import settings
        from django.db import connection

        from core.crypto.signing import coordinator_signing_key
        from explorer.models import Block

        coordinator_signing_key()
        template_job, template_receipt = make_template()
        per_job = leaves_per_job(template_job)
        result["settings"] = {
            name: getattr(settings, name, None)
            for name in (
                "BLOCK_MAX_LEAVES",
                "BLOCK_MAX_BLOCKS_PER_RUN",
                "BLOCK_SEAL_RUN_SECONDS",
                "HOUSEKEEPING_INTERVAL_SECONDS",
            )
        }
        result["leaves_per_paid_job"] = per_job
        result["history"] = history_phase(args, template_job, template_receipt, per_job)
        first_height = (Block.objects.order_by("-height").values_list("height", flat=True).first() or 0) + 1
        result["backlog"] = backlog_phase(args, template_job, template_receipt, per_job, args.db)
        interval = settings.HOUSEKEEPING_INTERVAL_SECONDS
        result["intervals"] = [
            interval_phase(args, template_job, template_receipt, per_job, rate, interval) for rate in args.rates
        ]
        result["checks"] = checks(first_height)
        connection.close()

    throughput = result["backlog"]["sealed"]["leaves_per_s"]
    result["targets"] = {
        f"{label}, {kind} jobs ({rate} jobs/s = {rate * leaves} leaves/s)": target(
            throughput, rate * leaves, higher_is_better=True
        )
        for rate, label in CLAIM_RATES.items()
        for kind, leaves in (("free", 1), ("paid", per_job))
    }
    result["targets"].update(
        {
            f"one interval at {phase['rate_jobs_per_s']} jobs/s sealed within it": phase["keeps_up"]
            for phase in result["intervals"]
        }
    )
    result["targets"]["nothing sealed twice"] = target(result["checks"]["sealed_twice"], 0, higher_is_better=False)
    # What the CPU measured per leaf (this process and PostgreSQL) makes of each rate, whatever else
    # the machine was busy with.
    cpu_per_leaf_s = sum(result["backlog"]["sealed"]["cpu_ms_per_1000_leaves"].values()) / 1e6
    result["cores_sealing_needs"] = {
        f"{label}, {kind} jobs ({rate * leaves} leaves/s)": round(rate * leaves * cpu_per_leaf_s, 2)
        for rate, label in CLAIM_RATES.items()
        for kind, leaves in (("free", 1), ("paid", per_job))
    }
    result["notes"] = [
        "in-process, one PostgreSQL connection; what is sealed is written in SQL beforehand (copies of one real paid "
        "completion), so the figures are sealing's alone, not sealing beside the completions that feed it",
        "the backlog's leaves/s is compared with the leaves/s the claims benchmark's completion rates make: one "
        f"receipt per free job, {per_job} leaves per paid job (receipt, escrow hold, settlement)",
    ]
    result["machine"]["loadavg_end"] = load_average()
    emit(result)


if __name__ == "__main__":
    main()
