"""What verified results cost and catch: in-process against PostgreSQL, through the service layer.

1. Decision latency: ``--jobs`` (300) paid jobs with ``verification: {"redundancy": 3}``, each
   run by three miners of distinct owners, the first answer a lie, so that the third result is
   the one the job waits for. Timed: from that last result stored (its attempt completed and
   committed) to the job's agreed result committed, that is ``jobs.verification.verification_decide``
   as the completion runs it: it judges the answers, settles the two that agreed, refunds the
   liar, records the verdicts, signs the agreed receipt and completes the job. Target: p50 <= 10
   ms. Also timed: the whole completion call of the last result (``job_complete``: the attempt's
   own completion, then the decision), and the floor, interleaved job by job, the completion of a
   plain paid job (the same call, no verification).
2. A liar among three honest miners: ``--redundant-jobs`` (1,000) jobs with redundancy 3, on
   four miners of four owners, one of which always answers wrong; each job's three attempts go
   to three of the four miners in a random order, and their answers come in a random order. The
   liar is caught when its answer is outvoted and refunded, or its attempt cancelled unpaid once
   the others agreed; target 100 % of the jobs it took part in, and no job's result its lie.
   (Suspensions are off in phases 1 and 2: they measure the vote alone.)
3. Canaries: at a 2 % canary rate (``--canary-rate``), a miner that always lies runs ordinary
   jobs; each canary that follows one is answered first by an in-cluster miner (the truth), then
   by the liar. Counted, over ``--trials`` (20) runs with different seeds: the ordinary jobs the
   liar completed until it was suspended (``VERIFICATION_SUSPEND_AFTER_WRONG_ANSWERS``, 3). The
   expected figure is about 3 / 0.02 = 150.

    .venv/bin/python bench/verification.py [--jobs 300] [--redundant-jobs 1000] [--trials 20] [--redis-db 13]

(``--redundant-jobs 0`` or ``--trials 0`` leaves that phase out.)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    MODEL,
    bench_env,
    emit,
    latency_summary_ms,
    load_average,
    log,
    make_miner,
    median,
    target,
)

TARGET_DECISION_MS = 10
PROMPT = {"type": "inference", "model": MODEL, "prompt": "What is the capital of France?"}
TRUTH, LIE = {"text": "Paris."}, {"text": "Berlin."}


def _claim_one(miner, parent):
    """``miner``'s claim of an attempt of ``parent`` (it is offered only those while they wait)."""
    from jobs.services import job_claim

    (attempt,) = job_claim(miner=miner)
    assert attempt.parent_id == parent.pk, "a miner was offered another job's attempt"
    return attempt


def decision_phase(n: int) -> dict:
    from accounts.services import user_get_or_create
    from jobs import verification
    from jobs.models import JobStatus
    from jobs.services import job_claim, job_complete, job_submit
    from payments.services import treasury_mint, wallet_open

    decide, decisions = verification.verification_decide, []

    def timed_decide(**kwargs):
        started = time.perf_counter()
        try:
            return decide(**kwargs)
        finally:
            decisions.append(time.perf_counter() - started)

    verification.verification_decide = timed_decide
    client = user_get_or_create(username="bench-verify-client")
    treasury_mint(wallet=wallet_open(user=client), amount=10 * n)
    liar, honest_1, honest_2 = (make_miner(f"bench-owner-{i}", f"bench-rig-{i}") for i in range(3))
    deciding, deciding_call, plain = [], [], []
    for i in range(n):
        parent = job_submit(
            client=client, model=MODEL, payload=PROMPT, payment_amount=1, verification={"redundancy": 3}
        ).job
        attempts = [_claim_one(miner, parent) for miner in (liar, honest_1, honest_2)]
        job_complete(job_id=attempts[0].pk, miner=liar, result=LIE, lease_token=attempts[0].lease_token)
        job_complete(job_id=attempts[1].pk, miner=honest_1, result=TRUTH, lease_token=attempts[1].lease_token)
        decisions.clear()
        started = time.perf_counter()
        job_complete(job_id=attempts[2].pk, miner=honest_2, result=TRUTH, lease_token=attempts[2].lease_token)
        elapsed = time.perf_counter() - started
        parent.refresh_from_db()
        assert parent.status == JobStatus.COMPLETED and parent.result == TRUTH, parent.status
        if i >= 10:  # warm-up
            deciding.append(decisions[0])
            deciding_call.append(elapsed)

        single = job_submit(client=client, model=MODEL, payload=PROMPT, payment_amount=1).job
        (claimed,) = job_claim(miner=honest_1, job_id=single.pk)
        started = time.perf_counter()
        job_complete(job_id=single.pk, miner=honest_1, result=TRUTH, lease_token=claimed.lease_token)
        if i >= 10:
            plain.append(time.perf_counter() - started)
    verification.verification_decide = decide
    decided, call, floor = latency_summary_ms(deciding), latency_summary_ms(deciding_call), latency_summary_ms(plain)
    return {
        "last_result_to_agreed_result": decided,
        "last_results_whole_completion_call": call,
        "plain_paid_completion_floor": floor,
        "decision_to_floor_ratio_p50": round(decided["p50_ms"] / floor["p50_ms"], 2),
        "target": target(decided["p50_ms"], TARGET_DECISION_MS, higher_is_better=False),
    }


def liar_phase(n: int, seed: int) -> dict:
    from accounts.services import user_get_or_create
    from core.errors import Conflict
    from jobs.models import Job, JobStatus, Verdict, VerdictKind
    from jobs.services import job_complete, job_submit
    from payments.models import PaymentStatus
    from payments.services import treasury_mint, wallet_open

    rng = random.Random(seed)
    client = user_get_or_create(username="bench-verify-client")
    treasury_mint(wallet=wallet_open(user=client), amount=3 * n)  # every attempt's escrow, should none come back
    miners = [make_miner(f"bench-vote-owner-{i}", f"bench-vote-rig-{i}") for i in range(4)]
    liar = miners[0]
    took_part = outvoted = cancelled_unpaid = lie_accepted = liar_paid = 0
    started = time.perf_counter()
    for _ in range(n):
        parent = job_submit(
            client=client, model=MODEL, payload=PROMPT, payment_amount=1, verification={"redundancy": 3}
        ).job
        chosen = rng.sample(miners, 3)
        attempts = [(miner, _claim_one(miner, parent)) for miner in chosen]
        rng.shuffle(attempts)
        for miner, attempt in attempts:
            answer = LIE if miner.pk == liar.pk else TRUTH
            with contextlib.suppress(Conflict):  # a late result after the agreement: 409, as for any ended job
                job_complete(job_id=attempt.pk, miner=miner, result=answer, lease_token=attempt.lease_token)
        parent.refresh_from_db()
        lie_accepted += parent.result == LIE
        mine = next((attempt for miner, attempt in attempts if miner.pk == liar.pk), None)
        if mine is None:
            continue
        took_part += 1
        mine = Job.objects.select_related("payment").get(pk=mine.pk)
        liar_paid += mine.payment.status == PaymentStatus.RELEASED
        if mine.status == JobStatus.CANCELLED:
            cancelled_unpaid += mine.payment.status == PaymentStatus.REFUNDED
        elif Verdict.objects.filter(job=mine, kind=VerdictKind.OUTVOTED).exists():
            outvoted += mine.payment.status == PaymentStatus.REFUNDED
    elapsed = time.perf_counter() - started
    caught = outvoted + cancelled_unpaid
    return {
        "jobs": n,
        "jobs_the_liar_took_part_in": took_part,
        "liar_outvoted_and_refunded": outvoted,
        "liar_cancelled_unpaid_after_agreement": cancelled_unpaid,
        "liar_paid": liar_paid,
        "jobs_whose_result_was_the_lie": lie_accepted,
        "caught_pct": round(100 * caught / took_part, 2) if took_part else None,
        "target": target(round(100 * caught / took_part, 2) if took_part else None, 100, higher_is_better=True),
        "seconds": round(elapsed, 1),
        "jobs_per_second": round(n / elapsed, 1),
    }


def canary_phase(trials: int, rate: float, seed: int) -> dict:
    from django.conf import settings

    from accounts.services import user_get_or_create
    from jobs.services import job_claim, job_complete, job_submit
    from miners.models import Miner

    settings.VERIFICATION_SUSPEND_AFTER_WRONG_ANSWERS = 3
    settings.VERIFICATION_CANARY_RATE = rate
    reference = make_miner("bench-cluster", "bench-cluster-rig")
    Miner.objects.filter(pk=reference.pk).update(in_cluster=True)
    reference.refresh_from_db()
    client = user_get_or_create(username="bench-canary-client")
    counts, canaries = [], []
    for trial in range(trials):
        random.seed(seed + trial)
        liar = make_miner(f"bench-liar-owner-{trial}", f"bench-liar-{trial}")
        jobs = asked = 0
        while True:
            job = job_submit(client=client, model=MODEL, payload=PROMPT).job
            (claimed,) = job_claim(miner=liar, job_id=job.pk)
            job_complete(job_id=job.pk, miner=liar, result=LIE, lease_token=claimed.lease_token)
            jobs += 1
            for answer in job_claim(miner=reference, limit=10):  # the canary's reference answers first
                job_complete(job_id=answer.pk, miner=reference, result=TRUTH, lease_token=answer.lease_token)
            for probe in job_claim(miner=liar, limit=10):  # then the liar gets it, as any job
                asked += 1
                job_complete(job_id=probe.pk, miner=liar, result=LIE, lease_token=probe.lease_token)
            liar.refresh_from_db()
            if liar.suspended_at is not None:
                break
            if jobs > 100 / rate:
                raise RuntimeError("the liar was never suspended")
        counts.append(jobs)
        canaries.append(asked)
        log(f"trial {trial}: suspended after {jobs} jobs ({asked} canaries)")
    return {
        "canary_rate": rate,
        "suspend_after_wrong_answers": 3,
        "trials": trials,
        "jobs_until_suspended": {
            "median": median(counts),
            "min": min(counts),
            "max": max(counts),
            "mean": round(sum(counts) / len(counts), 1),
            "each": counts,
        },
        "expected_about": round(3 / rate),
        "canaries_answered_until_suspended_median": median(canaries),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300, help="verified jobs timed in the decision phase")
    parser.add_argument("--redundant-jobs", type=int, default=1000, help="jobs with a liar among three honest miners")
    parser.add_argument("--trials", type=int, default=20, help="runs of the canary phase")
    parser.add_argument("--canary-rate", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--db", default="aitbc_bench_verification")
    parser.add_argument("--redis-db", type=int, default=13, help="a Redis database of the benchmark's own")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()

    result: dict = {"benchmark": "verification", "machine": {"cpus": os.cpu_count(), "loadavg_start": load_average()}}
    extra = {"REDIS_URL": f"redis://127.0.0.1:6379/{args.redis_db}"}
    with bench_env(args.db, keep_db=args.keep_db, pool=False, extra=extra) as env:
        # Liars are suspended in the canary phase only: the others measure the vote.
        env.django_setup(MATCHING_REPUTATION_HEADSTART_SECONDS=0, VERIFICATION_SUSPEND_AFTER_WRONG_ANSWERS=10**9)
        if args.jobs:
            log("decision latency")
            result["decision"] = decision_phase(args.jobs)
        if args.redundant_jobs:
            log("a liar among three honest miners")
            result["liar_among_honest"] = liar_phase(args.redundant_jobs, args.seed)
        if args.trials:
            log("canaries")
            result["canaries"] = canary_phase(args.trials, args.canary_rate, args.seed)
        from django.db import connection

        connection.close()
    result["machine"]["loadavg_end"] = load_average()
    emit(result)


if __name__ == "__main__":
    main()
