"""What the money path adds to a completion, and sealing a block of 10,000 ledger transactions.

1. Completion latency, in-process against PostgreSQL (``DATABASE_POOL=false``: one plain
   connection, kept open), one miner serving the off-catalog model ``m``. Three variants,
   interleaved in randomized blocks (each block a shuffled A, B, C) so machine noise hits all
   three alike, ``--iterations`` (2,000) each after ``--warmup`` (100) each:

   A. the bare completion of a free job, as ``job_complete`` makes it: the read of the lease
      (``jobs.services._leased``), the receipt's signing and the completing statement
      (``_store_completions``, which stores the job and its receipt), in autocommit: no
      settlement, no status event;
   B. a free job through ``jobs.services.job_complete``: state change + signed receipt
      (+ the job-status event published after commit);
   C. a paid job (``payment_amount=1``, held in escrow at submit) through ``job_complete``:
      state change + the escrow settlement (ledger transaction, wallet balances, payment and job
      rows) + receipt (+ status event).

   Every job is submitted through ``job_submit`` beforehand (in the order it will run) and
   claimed with ``job_claim(job_id=...)`` just before its completion; only the completion is
   timed. The pieces of each completion are timed too (the read of the leased job, the
   completing statement, ``_settle``, the receipt's signing and, for paid jobs, its INSERT,
   COMMIT, the status publish), the SQL statements of one
   completion of each kind are counted with ``CaptureQueriesContext``, and the paid path's
   statements are timed over ``--statement-sample`` completions.
   Target: money path adds (p50 C - p50 A) <= 2 ms.

2. Sealing: every leaf already waiting is sealed first; then ``--leaves`` (10,000)
   ``treasury_mint`` calls (batches of 500 per transaction) make that many real ledger
   transactions, and one ``explorer.services.block_seal`` with ``BLOCK_MAX_LEAVES`` = that
   number seals them (read through ``payments.selectors.transaction_documents``). Reported:
   seconds and leaves/s, with the time split into the leaf sources' reads, the Merkle root and
   the rest (the waiting list, header, signature, BlockLeaf insert, commit); then
   ``verify_chain``'s check
   (``explorer.selectors.chain_problems``) over the whole chain and over that block alone.

    .venv/bin/python bench/money.py [--iterations 2000] [--warmup 100] [--leaves 10000] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import importlib.util
import os
import pstats
import random
import re
import statistics
import sys
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    CpuMeter,
    bench_env,
    emit,
    latency_summary_ms,
    load_average,
    log,
    percentile,
    pg_backend_pids,
    proc_cpu_seconds,
    target,
)

TARGET_MONEY_MS = 2.0
MODEL = "m"
PAYLOAD = {"type": "inference", "prompt": "x"}
RESULT = {"text": "ok"}
PRICE = Decimal("1")
VARIANTS = ("A", "B", "C")
VARIANT_NAMES = {
    "A": "bare completion (_leased + receipt signing + _store_completions, free job)",
    "B": "free job through job_complete (state change + receipt)",
    "C": "paid job through job_complete (state change + settlement/ledger + receipt)",
}


# --- piece timers -----------------------------------------------------------------------------


class Pieces:
    """Wraps module attributes the completion path looks up at call time and adds up their time
    per completion. Patched in this process only; the code itself is not changed."""

    def __init__(self):
        self.current: dict[str, float] = defaultdict(float)
        self.undo = []

    def wrap_first(self, owner, names: tuple[str, ...], label: str) -> None:
        """Wrap the first of ``names`` that ``owner`` has (the code may be renamed under us)."""
        for name in names:
            if hasattr(owner, name):
                self.wrap(owner, name, label.format(name=name))
                return

    def wrap(self, owner, name: str, label: str) -> None:
        original = getattr(owner, name)
        had_own = name in vars(owner)
        current = self.current

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                current[label] += time.perf_counter() - t0

        setattr(owner, name, timed)
        self.undo.append((owner, name, original, had_own))

    def take(self) -> dict[str, float]:
        taken = dict(self.current)
        self.current.clear()
        return taken

    def restore(self) -> None:
        for owner, name, original, had_own in reversed(self.undo):
            if had_own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)
        self.undo.clear()


def install_pieces() -> Pieces:
    from django.db import connections

    import jobs.events
    import jobs.receipts
    import jobs.services
    import payments.services

    pieces = Pieces()
    pieces.wrap(jobs.services, "_store_completions", "complete_statement")
    pieces.wrap_first(jobs.services, ("_settle", "_settle_charged"), "settle")
    pieces.wrap(jobs.services, "receipts_sign", "receipt")
    pieces.wrap(jobs.receipts, "_signed_receipt", "receipt_signing")
    pieces.wrap(jobs.events, "publish_job_statuses", "status_publish")
    if importlib.util.find_spec("jobs.feed") is not None:  # the dashboard feed, where it exists
        pieces.wrap_first(importlib.import_module("jobs.feed"), ("publish_jobs_changed",), "feed_publish")
    pieces.wrap(connections["default"], "_commit", "commit")
    # Inside _settle (reported, not added up again): the escrow settlement and its ledger posting.
    pieces.wrap_first(jobs.services, ("escrows_settle", "escrow_settle"), "in_settle.{name}")
    pieces.wrap(payments.services, "ledger_post", "in_settle.ledger_post")
    pieces.wrap(payments.services, "wallet_open", "in_settle.wallet_open (payee)")
    pieces.wrap(payments.services, "system_wallet", "in_settle.system_wallet (fees)")
    return pieces


def piece_summary(samples: list[dict[str, float]], totals: list[float]) -> dict:
    """p50 and mean (ms) of each piece; ``receipt_build`` = receipt - signing;
    ``other_python`` = the rest of the timed call; ``in_settle.*`` are parts of ``settle``."""
    rows = []
    for piece, total in zip(samples, totals, strict=True):
        row = dict(piece)
        if "receipt" in row:
            row["receipt_build"] = row.pop("receipt") - row.get("receipt_signing", 0.0)
        row["other_python"] = total - sum(v for k, v in row.items() if not k.startswith("in_settle."))
        rows.append(row)
    names = sorted({k for r in rows for k in r})
    out = {}
    for name in names:
        values = [r.get(name, 0.0) * 1000 for r in rows]
        out[name] = {"p50_ms": round(percentile(values, 50), 3), "mean_ms": round(statistics.fmean(values), 3)}
    return out


# --- SQL statements ------------------------------------------------------------------------------

_TABLE = r'"?([a-z_]+)"?'


def statement_kind(sql: str) -> str:
    text = " ".join(sql.split())
    upper = text.upper()
    for prefix in ("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT"):
        if upper.startswith(prefix):
            return prefix
    if upper.startswith("INSERT INTO"):
        m = re.match(r"INSERT INTO " + _TABLE, text, re.I)
        rows = text.upper().count("), (") + 1 if " VALUES " in upper else 1
        return f"INSERT {m.group(1) if m else '?'}" + (f" ({rows} rows)" if rows > 1 else "")
    if upper.startswith("WITH") and "INSERT INTO EXPLORER_RECEIPT" in upper:
        return "COMPLETE (UPDATE jobs_job + INSERT jobs_receipt)"
    if upper.startswith("WITH"):
        m = re.search(r"UPDATE (?!OF )" + _TABLE, text, re.I)
        return f"WITH ... UPDATE {m.group(1) if m else '?'}"
    if upper.startswith("UPDATE"):
        m = re.match(r"UPDATE " + _TABLE, text, re.I)
        table = m.group(1) if m else "?"
        if "jsonb_to_recordset" in text:
            return f"UPDATE {table} (COMPLETE ... RETURNING)"
        if '"balance"' in text:
            return f"UPDATE {table} SET balance"
        return f"UPDATE {table}"
    if upper.startswith("SELECT"):
        m = re.search(r" FROM " + _TABLE, text, re.I)
        lock = " FOR UPDATE" if " FOR UPDATE" in upper else ""
        return f"SELECT {m.group(1) if m else '?'}{lock}"
    return upper.split(" ", 1)[0]


def statements_of(captured) -> list[str]:
    return [statement_kind(q["sql"]) for q in captured.captured_queries]


# --- set-up ------------------------------------------------------------------------------------


def schedule(iterations: int, warmup: int, seed: int) -> list[str]:
    """Randomized blocks: ``warmup`` then ``iterations`` shuffled (A, B, C) triples."""
    rng = random.Random(seed)
    order = []
    for _ in range(warmup + iterations):
        block = list(VARIANTS)
        rng.shuffle(block)
        order += block
    return order


def submit_all(order: list[str], client) -> list:
    from django.db import connection

    from jobs.services import job_submit

    jobs = []
    t0 = time.monotonic()
    for i, variant in enumerate(order):
        paid = {"payment_amount": PRICE} if variant == "C" else {}
        jobs.append(job_submit(client=client, model=MODEL, payload=dict(PAYLOAD), **paid).job.id)
        if (i + 1) % 2000 == 0:
            log(f"  submitted {i + 1}/{len(order)}")
    with connection.cursor() as cursor:
        for table in ("jobs_job", "payments_payment", "payments_wallet", "payments_ledgertransaction"):
            cursor.execute(f"ANALYZE {table}")
    log(f"  submitted {len(order)} jobs in {time.monotonic() - t0:.1f}s")
    return jobs


def claim(miner, job_id):
    from jobs.services import job_claim

    claimed = job_claim(miner=miner, limit=1, job_id=job_id)
    if len(claimed) != 1:
        raise RuntimeError(f"could not claim {job_id}")
    return claimed[0]


def complete(variant: str, job, miner) -> None:
    from django.utils import timezone

    from jobs.receipts import receipts_sign
    from jobs.services import Outcome, _completed, _leased, _store_completions, job_complete

    if variant == "A":
        outcome = Outcome(job_id=job.id, result=RESULT, metrics={}, lease_token=job.lease_token)
        now = timezone.now()
        held = [_completed(read, outcome, miner=miner, now=now) for read in _leased(miner, [job.id])]
        receipts = receipts_sign(completed=[(job, miner.miner_id, job.price) for job in held])
        done = _store_completions(held, receipts, miner=miner, now=now)
        if len(done) != 1:
            raise RuntimeError(f"bare completion of {job.id} changed {len(done)} rows")
    else:
        job_complete(job_id=job.id, miner=miner, result=RESULT, metrics={}, lease_token=job.lease_token)


# --- phase 1: completions ----------------------------------------------------------------------


def completions_phase(args, env) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from accounts.services import user_get_or_create
    from core.crypto.signing import coordinator_signing_key
    from miners.capabilities import Capabilities
    from miners.services import miner_register
    from payments.services import treasury_mint, wallet_open

    coordinator_signing_key()
    client = user_get_or_create(username="bench-money-client")
    treasury_mint(wallet=wallet_open(user=client), amount=Decimal(10 * (args.iterations + args.warmup + 1000)))
    owner = user_get_or_create(username="bench-money-owner")
    miner, _ = miner_register(
        owner=owner, miner_id="bench-money-miner", capabilities=Capabilities(models=(MODEL,), max_concurrent_jobs=1000)
    )

    order = schedule(args.iterations, args.warmup, args.seed)
    extra = ["A", "B", "C"] + ["C"] * args.statement_sample + (["C"] * args.profile_sample if args.profile else [])
    log(f"submitting {len(order) + len(extra)} jobs (A and B free, C paid {PRICE}) in the order they will run")
    job_ids = submit_all(order + extra, client)
    main_ids, extra_ids = job_ids[: len(order)], job_ids[len(order) :]

    log(f"timing {len(order)} completions (warm-up {args.warmup} of each first), randomized ABC blocks")
    lat: dict[str, list[float]] = {v: [] for v in VARIANTS}
    parts: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    pieces = install_pieces()
    cpu: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    backend = connection.connection.info.backend_pid if connection.connection else None
    warm = args.warmup * len(VARIANTS)
    meter = CpuMeter({"bench_process": lambda: [os.getpid()], "postgres_backends": lambda: pg_backend_pids(args.db)})
    try:
        with meter:
            for i, (variant, job_id) in enumerate(zip(order, main_ids, strict=True)):
                job = claim(miner, job_id)
                pieces.take()
                c0, b0 = time.process_time(), proc_cpu_seconds(backend) if backend else 0.0
                t0 = time.perf_counter()
                complete(variant, job, miner)
                elapsed = time.perf_counter() - t0
                c1, b1 = time.process_time(), proc_cpu_seconds(backend) if backend else 0.0
                taken = pieces.take()
                if i >= warm:
                    lat[variant].append(elapsed)
                    parts[variant].append(taken)
                    cpu[variant].append((c1 - c0, b1 - b0))
                if (i + 1) % 1500 == 0:
                    log(f"  {i + 1}/{len(order)}")
    finally:
        pieces.restore()
    timed_n = len(order) - warm

    summaries = {v: latency_summary_ms(lat[v]) for v in VARIANTS}
    p50 = {v: statistics.median(lat[v]) * 1000 for v in VARIANTS}
    money_adds = round(p50["C"] - p50["A"], 3)
    out = {
        "connection": "DATABASE_POOL=false: one plain PostgreSQL connection for the whole run (127.0.0.1)",
        "interleaving": f"randomized blocks of (A, B, C), seed {args.seed}; warm-up {args.warmup} of each not counted",
        "variants": {
            v: {"what": VARIANT_NAMES[v], **summaries[v], "pieces": piece_summary(parts[v], lat[v])} for v in VARIANTS
        },
        "money_path_adds_ms": {
            "p50_C_minus_p50_A": money_adds,
            "p50_C_minus_p50_B (settlement alone)": round(p50["C"] - p50["B"], 3),
            "p50_B_minus_p50_A (status event)": round(p50["B"] - p50["A"], 3),
            "target": target(money_adds, TARGET_MONEY_MS, higher_is_better=False),
        },
        "cpu": meter.report(timed_n),
    }
    # CPU per completion: less hurt than wall time when other processes share the two cores.
    cpu_ms = {
        v: {
            "bench_process": statistics.fmean(c for c, _ in cpu[v]) * 1000,
            "postgres_backend": statistics.fmean(b for _, b in cpu[v]) * 1000,
        }
        for v in VARIANTS
    }
    for v in VARIANTS:
        cpu_ms[v]["both"] = cpu_ms[v]["bench_process"] + cpu_ms[v]["postgres_backend"]
    out["cpu_ms_per_completion_mean"] = {
        **{v: {k: round(x, 3) for k, x in cpu_ms[v].items()} for v in VARIANTS},
        "money_path_adds_C_minus_A": {k: round(cpu_ms["C"][k] - cpu_ms["A"][k], 3) for k in cpu_ms["A"]},
        "settlement_alone_C_minus_B": {k: round(cpu_ms["C"][k] - cpu_ms["B"][k], 3) for k in cpu_ms["A"]},
        "note": "bench: time.process_time() around the call (all threads, so the status publish's event-loop "
        "thread counts); backend: its utime+stime from /proc in clock ticks (10 ms), so only the mean over "
        "the run means anything",
    }

    # SQL statements of one completion of each kind.
    counts = {}
    for variant, job_id in zip(("A", "B", "C"), extra_ids[:3], strict=True):
        job = claim(miner, job_id)
        with CaptureQueriesContext(connection) as captured:
            complete(variant, job, miner)
        kinds = statements_of(captured)
        counts[variant] = {"statements": len(kinds), "list": kinds}
    out["sql_statements_per_completion"] = {
        **counts,
        "note": "CaptureQueriesContext (it lists BEGIN and COMMIT too: each is a round trip with psycopg 3)",
    }

    # Where the paid path's database time goes: each statement timed over a sample.
    sample_ids = extra_ids[3 : 3 + args.statement_sample]
    if sample_ids:
        per_kind: dict[str, list[float]] = defaultdict(list)
        wall, settle = [], []

        def timed_execute(execute, sql, params, many, context):
            t = time.perf_counter()
            try:
                return execute(sql, params, many, context)
            finally:
                per_kind[statement_kind(sql)].append(time.perf_counter() - t)

        pieces = install_pieces()
        try:
            for job_id in sample_ids:
                job = claim(miner, job_id)
                pieces.take()
                with connection.execute_wrapper(timed_execute):
                    t0 = time.perf_counter()
                    complete("C", job, miner)
                    wall.append(time.perf_counter() - t0)
                taken = pieces.take()
                settle.append(taken.get("settle", 0.0))
                per_kind["COMMIT (connection._commit)"].append(taken.get("commit", 0.0))
        finally:
            pieces.restore()
        n = len(sample_ids)
        rows = sorted(
            ((kind, sum(times) / n * 1000, len(times) / n) for kind, times in per_kind.items()), key=lambda r: -r[1]
        )
        settle_ms = statistics.fmean(settle) * 1000
        settle_sql = sum(
            ms
            for kind, ms, _ in rows
            if not kind.startswith(("COMPLETE", "SELECT jobs_job", "INSERT jobs_receipt", "COMMIT"))
        )
        out["paid_statement_times"] = {
            "completions": n,
            "wall_mean_ms": round(statistics.fmean(wall) * 1000, 3),
            "statements_mean_ms_total": round(sum(r[1] for r in rows), 3),
            "settle_mean_ms": round(settle_ms, 3),
            "settle_statements_mean_ms": round(settle_sql, 3),
            "settle_python_mean_ms": round(settle_ms - settle_sql, 3),
            "by_statement": [
                {"statement": k, "times_per_completion": round(c, 2), "ms_per_completion": round(ms, 3)}
                for k, ms, c in rows
            ],
            "note": "perf_counter around each cursor execute (driver + round trip + server), via "
            "connection.execute_wrapper; mean per completion",
        }

    profile_ids = extra_ids[3 + args.statement_sample :]
    if profile_ids:
        out["profile_paid"] = profile_completions(miner, profile_ids)

    out["_money_adds"] = money_adds
    return out


def profile_completions(miner, job_ids: list) -> dict:
    """cProfile over paid completions: cumulative time per completion of the project's functions
    and of the database driver's calls."""
    profiler = cProfile.Profile()
    for job_id in job_ids:
        job = claim(miner, job_id)
        profiler.enable()
        complete("C", job, miner)
        profiler.disable()
    stats = pstats.Stats(profiler)
    n = len(job_ids)
    rows = []
    root = str(Path(__file__).resolve().parent.parent)
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():
        project = filename.startswith(root) and "/.venv/" not in filename
        interesting = project or func in ("execute", "_sign", "crypto_sign", "commit", "sign", "dumps")
        if interesting and cumtime / n >= 0.02e-3:
            where = filename.replace(root + "/", "") if project else Path(filename).name
            rows.append((f"{where}:{line}({func})", ncalls / n, tottime / n * 1000, cumtime / n * 1000))
    rows.sort(key=lambda r: -r[3])
    own = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:15]
    return {
        "completions": n,
        "top_by_cumulative (project code and driver calls)": [
            {"function": f, "calls": round(c, 2), "own_ms": round(t, 3), "cumulative_ms": round(cu, 3)}
            for f, c, t, cu in rows[:30]
        ],
        "top_by_own_time (everything)": [
            {
                "function": f"{Path(filename).parent.name}/{Path(filename).name}:{line}({func})",
                "calls": round(ncalls / n, 2),
                "own_ms": round(tottime / n * 1000, 3),
            }
            for (filename, line, func), (_cc, ncalls, tottime, _cum, _callers) in own
        ],
        "note": "per completion, under cProfile (inflates Python time ~1.5-2x)",
    }


# --- phase 2: sealing --------------------------------------------------------------------------


def sealing_phase(args) -> dict:
    from django.db import transaction

    from core.crypto import merkle, selectors, services
    from explorer.models import Block
    from explorer.sources import LEAF_SOURCES
    from payments.models import Wallet
    from payments.services import treasury_mint, wallet_open

    log("sealing what waits first (receipts and ledger transactions of phase 1)")
    t0 = time.perf_counter()
    before = []
    while sealed := services.blocks_seal_pending():
        before += sealed
    pre = {
        "blocks": len(before),
        "leaves": sum(b.tx_count for b in before),
        "seconds": round(time.perf_counter() - t0, 2),
    }

    log(f"minting {args.leaves} ledger transactions")
    wallet: Wallet = wallet_open(user=_user("bench-money-mint"))
    t0 = time.perf_counter()
    made = 0
    while made < args.leaves:
        with transaction.atomic():
            for _ in range(min(500, args.leaves - made)):
                treasury_mint(wallet=wallet, amount=Decimal("0.01"), memo="bench")
                made += 1
    mint_s = time.perf_counter() - t0
    log(f"  minted {made} in {mint_s:.1f}s")

    split: dict[str, float] = defaultdict(float)
    reads: list[dict] = []
    undo = []
    for source in LEAF_SOURCES:
        original = source.current

        def current(refs, _original=original, _kind=source.kind):
            t = time.perf_counter()
            found = {}
            try:
                found = _original(refs)
                return found
            finally:
                took = time.perf_counter() - t
                split[f"read_{_kind}s"] += took
                reads.append({"source": str(_kind), "refs": len(refs), "found": len(found), "ms": took * 1000})

        source.current = current
        undo.append(source)
    original_root = merkle.root

    def root(*a, **kw):
        t = time.perf_counter()
        try:
            return original_root(*a, **kw)
        finally:
            split["merkle_root"] += time.perf_counter() - t

    merkle.root = root
    log(f"sealing one block of up to {args.leaves} leaves")
    try:
        t0 = time.perf_counter()
        block = services.block_seal(max_leaves=args.leaves)
        seal_s = time.perf_counter() - t0
    finally:
        merkle.root = original_root
        for source in undo:
            del source.current
    leaves = block.tx_count if block else 0
    split_ms = {k: round(v * 1000, 1) for k, v in split.items()}
    split_ms["waiting_list_block_header_sign_leaf_insert_commit_rest"] = round(
        seal_s * 1000 - sum(split.values()) * 1000, 1
    )
    log(f"  sealed block {block.height if block else None}: {leaves} leaves in {seal_s:.2f}s")

    log("verify_chain")
    t0 = time.perf_counter()
    problems = list(selectors.chain_problems())
    verify_s = time.perf_counter() - t0
    total_leaves = sum(Block.objects.values_list("tx_count", flat=True))
    t0 = time.perf_counter()
    block_problems = list(selectors._leaf_problems(Block.objects.prefetch_related("leaves").get(pk=block.pk)))
    verify_block_s = time.perf_counter() - t0
    log(f"  verify_chain {verify_s:.2f}s over {total_leaves} leaves; that block's leaves {verify_block_s:.2f}s")
    return {
        "sealed_before (phase 1 leftovers)": pre,
        "mint": {"transactions": made, "seconds": round(mint_s, 2), "per_s": round(made / mint_s, 1)},
        "block": {
            "height": block.height if block else None,
            "leaves": leaves,
            "all_ledger_transactions": leaves == args.leaves,
            "seconds": round(seal_s, 3),
            "leaves_per_s": round(leaves / seal_s, 1) if seal_s else None,
            "split_ms": split_ms,
            "leaf_source_reads": [{**r, "ms": round(r["ms"], 1)} for r in reads],
            "target": {"value": round(seal_s, 3), "target": None, "met": None},
        },
        "verify_chain": {
            "blocks": Block.objects.count(),
            "leaves": total_leaves,
            "seconds": round(verify_s, 3),
            "leaves_per_s": round(total_leaves / verify_s, 1) if verify_s else None,
            "problems": len(problems),
            "first_problems": problems[:5],
            "this_block_leaves_only": {
                "seconds": round(verify_block_s, 3),
                "leaves_per_s": round(leaves / verify_block_s, 1) if verify_block_s else None,
                "problems": len(block_problems),
            },
        },
    }


def _user(username: str):
    from accounts.services import user_get_or_create

    return user_get_or_create(username=username)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=2000, help="timed completions of each variant")
    parser.add_argument("--warmup", type=int, default=100, help="untimed completions of each variant first")
    parser.add_argument("--statement-sample", type=int, default=200, help="paid completions with statements timed")
    parser.add_argument("--profile", action="store_true", help="cProfile paid completions (always when over target)")
    parser.add_argument("--profile-sample", type=int, default=300)
    parser.add_argument("--leaves", type=int, default=10000, help="ledger transactions sealed in one block")
    parser.add_argument("--skip-seal", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--db", default="aitbc_bench")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()

    result: dict = {"benchmark": "money", "machine": {"cpus": os.cpu_count(), "loadavg_start": load_average()}}
    with bench_env(args.db, keep_db=args.keep_db, pool=False) as env:
        env.django_setup(BLOCK_MAX_LEAVES=args.leaves)
        completions = completions_phase(args, env)
        money_adds = completions.pop("_money_adds")
        if money_adds > TARGET_MONEY_MS and "profile_paid" not in completions:
            log("over target: profiling paid completions")
            args.profile = True
            from accounts.services import user_get_or_create
            from jobs.services import job_submit
            from miners.models import Miner

            client = user_get_or_create(username="bench-money-client")
            miner = Miner.objects.get(miner_id="bench-money-miner")
            ids = [
                job_submit(client=client, model=MODEL, payload=dict(PAYLOAD), payment_amount=PRICE).job.id
                for _ in range(args.profile_sample)
            ]
            completions["profile_paid"] = profile_completions(miner, ids)
        result["completion"] = completions
        if not args.skip_seal:
            result["sealing"] = sealing_phase(args)
        from django.db import connection

        connection.close()

    result["targets"] = {"money_path_adds_p50_ms": completions["money_path_adds_ms"]["target"]}
    if "sealing" in result:
        result["targets"]["seal_block_seconds"] = result["sealing"]["block"]["target"]
    result["notes"] = [
        "in-process, one connection, no HTTP: only the job_complete call (or, for A, _leased, the receipt's "
        "signing and _store_completions) is timed; the claim happens just before, untimed",
        f"model {MODEL!r} is outside the catalog: free jobs have no payment; paid jobs hold {PRICE} in escrow "
        "(settled in full: no unit price, so 3 ledger entries: escrow, miner's owner, platform fee)",
        "pieces are timed by wrapping jobs.services._store_completions/_settle_charged, "
        "jobs.receipts.receipts_sign, "
        "_signed_receipt, jobs.events.publish_job_statuses and the connection's _commit "
        "in this process only",
        "B and C publish the job-status event to the Redis channel layer after commit (synchronously); "
        "A does not, so C - A counts it",
    ]
    result["machine"]["loadavg_end"] = load_average()
    emit(result)


if __name__ == "__main__":
    main()
