"""Verified results: a job's answer agreed on by several miners, canaries, and verdicts.

**Verified jobs.** A job submitted with ``verification`` (``redundancy`` k, ``agreement``,
``threshold``) runs as k attempts: child jobs (``Job.parent``) queued at once, claimed, leased,
fenced and receipted like any job, each by a miner of another owner (the claim's rule), each with
its price in escrow. Whenever an attempt ends, ``verification_decide`` compares the answers in
hand (``jobs.agreement.consensus``; a strict majority of k must agree). Once they do, the verified
job completes with the answer of the group's first member, signed in a receipt naming every
provider that agreed; the attempts that agreed are paid, those outvoted are refunded (their
miners are paid nothing), the attempts still queued or running are cancelled and refunded (a
late result from them is a 409, as for any ended job). When agreement can no longer be reached,
or the job's TTL passes first (``verifications_end_past_ttl``), it fails with ``NO_CONSENSUS``
and every attempt's escrow is refunded. A job whose attempts have all ended but that is still
undecided (its decision failed after the last result was stored) is decided by housekeeping
(``verifications_decide_stalled``) at its next pass.

**Canaries.** After a job an external miner completes, with probability
``VERIFICATION_CANARY_RATE``, a canary follows: a known-answer job for the same model, submitted
by the platform's canary account (``VERIFICATION_CANARY_USERNAME``) and paid like any job. It is
answered first by an in-cluster worker (the platform's own engine: the reference attempt, pinned
to it), then asked of the miner (the probe, pinned to it, indistinguishable from other jobs to the
miner: a greedy prompt of the job's kind). The probe's answer is judged against the reference's;
a wrong one is refunded and is a failed canary.

**Verdicts** (``jobs.models.Verdict``) say what was found about one answer: agreed, outvoted,
canary passed or failed. Wrong answers lower the miner's reputation
(``jobs.selectors.with_reputation``) and, past ``VERIFICATION_SUSPEND_AFTER_WRONG_ANSWERS`` in the
reputation window, suspend it (``miners.services.miner_suspend``) until staff lift the suspension.
"""

import logging
import random
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from accounts.models import User
from accounts.services import user_get_or_create
from core import rawsql
from core.errors import ServiceError
from jobs import services, sql
from jobs.agreement import EXACT, SEMANTIC, agree, consensus, majority
from jobs.models import Job, JobStatus, JobType, Verdict, VerdictKind
from jobs.receipts import receipt_sign_agreed, receipts_store
from jobs.selectors import REPUTATION_WINDOW, with_reputation, with_wrong_answers_counting
from miners import services as miner_services
from miners.models import Miner, MinerStatus
from payments.models import Payment

logger = logging.getLogger(__name__)

NO_CONSENSUS = "NO_CONSENSUS"
ATTEMPT_NOT_NEEDED = "ATTEMPT_NOT_NEEDED"
# The similarity a canary's embedding must reach: the same model on another host gives the same
# vectors up to rounding.
CANARY_EMBEDDING_THRESHOLD = 0.99
CANARY_MAX_TOKENS = 32
_CANARY_PROMPTS = (
    "What is {a} plus {b}? Answer with the number only.",
    "List the numbers from {a} to {c}, separated by commas.",
    "Write the word for the number {a} in English.",
    "Which is larger, {a} or {b}? Answer in one word.",
    "Spell the word 'coordinator' backwards, then add the number {b}.",
    "Repeat this sentence exactly: the {a} green boxes hold {b} stones.",
    "What is {a} times 3?",
    "Name the day that comes {d} days after Monday.",
)


# --- Verdicts --------------------------------------------------------------------------


def verdict_record(*, attempt: Job, kind: str) -> Verdict:
    """Record ``kind`` (a ``VerdictKind``) on the answer of ``attempt``, a job its miner completed
    (see ``verdicts_record``); the verdict on it, the first when it had one already."""
    with transaction.atomic():
        verdicts_record(verdicts=[(attempt, kind)])
    return Verdict.objects.get(job=attempt)


def verdicts_record(*, verdicts: list[tuple[Job, str]]) -> None:
    """Record verdicts, ``(attempt, kind)`` each, on answers their miners completed, once per job
    (a second verdict on a job is ignored), in the caller's transaction. A wrong answer refreshes
    its miner's stored reputation and suspends the miner when it is one too many; an agreeing one
    changes neither. On PostgreSQL one statement (``jobs.sql.VERDICTS``)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(sql.VERDICTS, _verdict_params(verdicts, now=timezone.now()))
            _suspend_past_threshold(verdicts, cursor.fetchall())
        return
    Verdict.objects.bulk_create(
        [Verdict(job=attempt, miner_id=attempt.miner_id, kind=kind) for attempt, kind in verdicts],
        ignore_conflicts=True,
    )
    wrong = {attempt.miner_id for attempt, kind in verdicts if kind in VerdictKind.WRONG}
    if not wrong:
        return
    figures = []
    for miner in with_wrong_answers_counting(Miner.objects.filter(pk__in=list(wrong))):
        miner_services.miner_set_reputation(miner=miner, reputation=miner.reputation)
        figures.append((miner.pk, miner.wrong_counting, miner.suspended_at is not None))
    _suspend_past_threshold(verdicts, figures)


def _verdict_params(verdicts: list[tuple[Job, str]], *, now) -> dict:
    """The parameters of ``jobs.sql.VERDICTS`` (and of ``AGREED``) for ``verdicts``."""
    return {
        "verdict_jobs": [attempt.pk for attempt, _ in verdicts],
        "verdict_miners": [attempt.miner_id for attempt, _ in verdicts],
        "verdict_kinds": [str(kind) for _, kind in verdicts],
        "wrong_miners": list({attempt.miner_id for attempt, kind in verdicts if kind in VerdictKind.WRONG}),
        "wrong_kinds": [str(kind) for kind in VerdictKind.WRONG],
        "since": now - REPUTATION_WINDOW,
        "now": now,
    }


def _suspend_past_threshold(verdicts: list[tuple[Job, str]], figures) -> None:
    """Suspend the miners given a wrong answer among ``verdicts`` whose wrong answers counting
    towards a suspension reach the threshold: ``figures`` are ``(miner pk, that count, whether it
    is suspended already, ...)`` each."""
    wrong = {attempt.miner_id: (attempt, kind) for attempt, kind in verdicts if kind in VerdictKind.WRONG}
    for miner_pk, counting, suspended, *_ in figures:
        if suspended or counting < settings.VERIFICATION_SUSPEND_AFTER_WRONG_ANSWERS:
            continue
        attempt, kind = wrong[miner_pk]
        miner = attempt.miner
        what = "failed canary" if kind == VerdictKind.CANARY_FAILED else "outvoted answer"
        miner_services.miner_suspend(
            miner=miner,
            reason=f"{counting} wrong answers (outvoted or failed canaries) in the reputation "
            f"window; the last, a {what}, on job {attempt.pk}.",
        )


def miners_refresh_reputation() -> int:
    """Store every registered miner's reputation where matching reads it (housekeeping: completions
    and failures move it between verdicts). Returns how many miners were read."""
    miners = with_reputation(Miner.objects.exclude(status=MinerStatus.DEREGISTERED))
    reputations = dict(miners.values_list("pk", "reputation"))
    miner_services.miners_set_reputation(reputations=reputations)
    return len(reputations)


# --- Deciding a verified job -------------------------------------------------------------


def attempts_ended(events: list[tuple[str, Job]]) -> None:
    """``jobs.services.when_jobs_end`` listener, in the transaction of the change: decide the
    verified jobs whose attempts ended, and follow external miners' completed jobs with canaries."""
    ended = [job for event, job in events if event.startswith("job.")]
    for parent_id in dict.fromkeys(job.parent_id for job in ended if job.parent_id):
        verification_decide(parent_id=parent_id)
    if settings.VERIFICATION_CANARY_RATE > 0:
        for job in ended:
            if job.status == JobStatus.COMPLETED and random.random() < settings.VERIFICATION_CANARY_RATE:
                canary_schedule(after=job)


def verification_decide(*, parent_id, past_deadline: bool = False, judged_at=None) -> Job | None:
    """Judge the answers of a verified job's attempts so far (see the module's docstring); the job
    as it is after. ``past_deadline``: its TTL has passed, so no agreement yet is a failure.
    ``judged_at`` (the stalled sweep's time, read before it): a job the decision leaves running is
    marked judged then (its ``updated_at``), and the sweep passes it over until an attempt changes."""
    with transaction.atomic():
        parent, attempts = _locked(parent_id)
        if parent is None or parent.status != JobStatus.RUNNING or not parent.verification:
            return parent
        if parent.verification.get("canary_miner"):
            _decide_canary(parent, attempts, past_deadline=past_deadline)
        else:
            _decide_verified(parent, attempts, past_deadline=past_deadline)
        if judged_at is not None and parent.status == JobStatus.RUNNING:
            Job.objects.filter(pk=parent.pk, updated_at__lt=judged_at).update(updated_at=judged_at)
    return parent


def _locked(parent_id) -> tuple[Job | None, list[Job]]:
    """The verified job, locked, and, while it runs, its attempts, locked, each with its miner (and
    the miner's owner) and payment, in the order they completed (those still out last); ``(None,
    [])`` when another decision (or a cancel) holds the job: that one locks the attempts next, so
    it sees this change, and waiting here could deadlock with it on the attempts."""
    if connection.vendor != "postgresql":
        parent = Job.objects.select_for_update(of=("self",), skip_locked=True).filter(pk=parent_id).first()
        if parent is None or parent.status != JobStatus.RUNNING or not parent.verification:
            return parent, []
        attempts = list(
            Job.objects.select_for_update(of=("self",))
            .select_related("miner__owner", "payment")
            .filter(parent=parent)
            .order_by("completed_at", "created_at")
        )
        return parent, attempts
    with connection.cursor() as cursor:
        cursor.execute(sql.LOCK_VERIFIED, {"id": parent_id})
        rows = cursor.fetchall()
    if not rows:
        return None, []
    job_at, attempt_at, miner_at, owner_at, payment_at = sql.LOCK_VERIFIED_OFFSETS
    (parent,) = rawsql.instances(Job, rows[:1], start=job_at)
    rows = [row for row in rows if row[attempt_at] is not None]
    attempts = rawsql.instances(Job, rows, start=attempt_at)
    for row, attempt, payment in zip(rows, attempts, rawsql.instances(Payment, rows, start=payment_at), strict=True):
        attempt.parent = parent
        attempt.payment = payment if attempt.payment_id else None
        if attempt.miner_id is None:
            attempt.miner = None
            continue
        (attempt.miner,) = rawsql.instances(Miner, [row], start=miner_at)
        (attempt.miner.owner,) = rawsql.instances(User, [row], start=owner_at)
    # As locked: by completion (PostgreSQL's ascending order puts those not completed last).
    attempts.sort(key=lambda a: (a.completed_at is None, a.completed_at or a.created_at, a.created_at))
    return parent, attempts


def _decide_verified(parent: Job, attempts: list[Job], *, past_deadline: bool) -> None:
    rule = parent.verification
    answered = [attempt for attempt in attempts if attempt.status == JobStatus.COMPLETED]
    active = [attempt for attempt in attempts if attempt.status in JobStatus.ACTIVE]
    required = majority(rule["redundancy"])
    found = consensus(
        [attempt.result for attempt in answered],
        agreement=rule["agreement"],
        threshold=rule.get("threshold"),
        required=required,
    )
    if found.reached:
        agreed = [answered[index] for index in found.group]
        outvoted = [answered[index] for index in found.dissenters(len(answered))]
        _agree(parent, agreed=agreed, outvoted=outvoted, active=active)
    elif past_deadline or len(found.group) + len(active) < required:
        _fail(
            parent,
            attempts,
            code=NO_CONSENSUS,
            message=f"No {required} of the {rule['redundancy']} attempts agreed"
            + (" before the job's TTL ran out." if past_deadline else f" ({len(answered)} answered)."),
        )


def _agree(parent: Job, *, agreed: list[Job], outvoted: list[Job], active: list[Job]) -> None:
    now = timezone.now()
    reason = "Another answer was agreed on."
    cancelled = _cancel(active, now=now, reason=reason, save=connection.vendor != "postgresql")
    # The agreeing attempts paid, the others refunded: one statement.
    paid = services.settle_each(
        agreed,
        refunds=[(attempt, reason) for attempt in cancelled]
        + [(attempt, "The answer was outvoted.") for attempt in outvoted],
    )
    representative = agreed[0]
    parent.status, parent.result, parent.usage = JobStatus.COMPLETED, representative.result, representative.usage
    parent.progress, parent.completed_at, parent.error_code, parent.error_message = 100, now, "", ""
    parent.updated_at = now
    receipt = receipt_sign_agreed(
        job=parent,
        providers=[attempt.miner.miner_id for attempt in agreed],
        price=sum(paid, Decimal(0)) if paid else None,
        metadata={
            "redundancy": parent.verification["redundancy"],
            "agreement": parent.verification["agreement"],
            "threshold": parent.verification.get("threshold"),
            "attempts": [str(attempt.pk) for attempt in agreed],
            "outvoted": [attempt.miner.miner_id for attempt in outvoted],
        },
    )
    verdicts = [(attempt, VerdictKind.AGREED) for attempt in agreed]
    verdicts += [(attempt, VerdictKind.OUTVOTED) for attempt in outvoted]
    if connection.vendor == "postgresql":
        # The job, the attempts cancelled, the receipt, the verdicts and reputations: one statement.
        with connection.cursor() as cursor:
            cursor.execute(
                sql.AGREED,
                {
                    "id": parent.pk,
                    "result": sql.jsonb_param(parent.result),
                    "usage": sql.jsonb_param(parent.usage),
                    "cancel": [attempt.pk for attempt in cancelled],
                    "cancel_code": ATTEMPT_NOT_NEEDED,
                    "reason": reason,
                    "receipt_id": receipt.receipt_id,
                    "signed_json": receipt.signed_json,
                    "opening": None if receipt.opening is None else sql.jsonb_param(receipt.opening),
                    **_verdict_params(verdicts, now=now),
                },
            )
            _suspend_past_threshold(verdicts, cursor.fetchall())
    else:
        parent.save(update_fields=["status", "result", "usage", "progress", "completed_at", "error_code",
                                   "error_message", "updated_at"])  # fmt: skip
        receipts_store([receipt])
        verdicts_record(verdicts=verdicts)
    services.jobs_ended([parent, *cancelled], settled=[*agreed, *outvoted])


def _fail(parent: Job, attempts: list[Job], *, code: str, message: str) -> None:
    """End a verified job (or a canary) unanswered: its attempts' escrows all go back."""
    now = timezone.now()
    cancelled = _cancel([a for a in attempts if a.status in JobStatus.ACTIVE], now=now, reason=message)
    held = [attempt for attempt in attempts if attempt.status == JobStatus.COMPLETED]
    services.refund_escrows([(attempt, message) for attempt in [*cancelled, *held]])
    parent.status, parent.completed_at, parent.error_code, parent.error_message = JobStatus.FAILED, now, code, message
    parent.save(update_fields=["status", "completed_at", "error_code", "error_message", "updated_at"])
    services.jobs_ended([parent, *cancelled], settled=held)


def _cancel(attempts: list[Job], *, now, reason: str, save: bool = True) -> list[Job]:
    """Cancel attempts still queued or running (the caller refunds them): their miners' late results
    are 409s. ``save=False``: the caller stores them."""
    for attempt in attempts:
        attempt.status, attempt.completed_at, attempt.lease_expires_at = JobStatus.CANCELLED, now, None
        attempt.error_code, attempt.error_message, attempt.updated_at = ATTEMPT_NOT_NEEDED, reason, now
    if attempts and save:
        Job.objects.bulk_update(
            attempts, ["status", "completed_at", "lease_expires_at", "error_code", "error_message", "updated_at"]
        )
    return attempts


def verifications_end_past_ttl(*, now=None) -> int:
    """Fail the verified jobs (and canaries) whose TTL passed without agreement (housekeeping).
    Returns how many were judged."""
    now = now or timezone.now()
    overdue = Job.objects.filter(
        status=JobStatus.RUNNING, miner__isnull=True, parent__isnull=True, expires_at__lte=now
    ).exclude(verification={})
    ids = list(overdue.values_list("pk", flat=True)[: services.SWEEP_BATCH])
    for parent_id in ids:
        verification_decide(parent_id=parent_id, past_deadline=True)
    return len(ids)


def verifications_decide_stalled() -> int:
    """Decide the verified jobs (and canaries) still running though none of their attempts is queued
    or running any more (housekeeping): a decision that failed after an attempt's result was
    stored, or one left to another decision that had read the attempts before that result. Such a
    job would otherwise wait for its TTL. A job judged here and left running (its decision found
    nothing to do) is passed over until one of its attempts changes after that. Returns how many
    were judged."""
    judged_at = timezone.now()
    attempts = Job.objects.filter(parent=OuterRef("pk"))
    stalled = (
        Job.objects.filter(status=JobStatus.RUNNING, miner__isnull=True, parent__isnull=True)
        .exclude(verification={})
        .filter(Exists(attempts.filter(updated_at__gt=OuterRef("updated_at"))))
        .exclude(Exists(attempts.filter(status__in=JobStatus.ACTIVE)))
    )
    ids = list(stalled.values_list("pk", flat=True)[: services.SWEEP_BATCH])
    for parent_id in ids:
        verification_decide(parent_id=parent_id, judged_at=judged_at)
    return len(ids)


# --- Canaries --------------------------------------------------------------------------


def canary_schedule(*, after: Job) -> Job | None:
    """Follow ``after``, a job an external miner completed, with a canary for that miner (see the
    module's docstring); None when none can be made: the job was itself part of a canary, no
    in-cluster worker serves its model to answer first, or the canary account can't pay."""
    miner = after.miner
    if miner is None or miner.in_cluster:
        return None
    if after.parent_id and Job.objects.filter(pk=after.parent_id, verification__has_key="canary_miner").exists():
        return None
    reference = (
        Miner.objects.filter(
            in_cluster=True, status=MinerStatus.ONLINE, draining=False, suspended_at__isnull=True,
            served_models__name=after.model,
        )
        .order_by("?")
        .first()
    )  # fmt: skip
    if reference is None:
        return None
    payload, agreement = _canary_payload(after)
    verification = {"redundancy": 2, "agreement": agreement}
    if agreement == SEMANTIC:
        verification["threshold"] = CANARY_EMBEDDING_THRESHOLD
    try:
        with transaction.atomic():
            return services.canary_submit(
                client=user_get_or_create(username=settings.VERIFICATION_CANARY_USERNAME),
                model=after.model,
                job_type=after.type,
                payload=payload,
                verification=verification,
                target=miner,
                reference=reference,
            )
    except ServiceError as error:
        logger.warning("no canary for miner %s: %s", miner.miner_id, error.detail)
        return None


def _canary_payload(like: Job) -> tuple[dict, str]:
    """A known-answer payload of ``like``'s kind, and how its answers are compared."""
    a, b = random.randint(2, 97), random.randint(2, 97)
    words = {"a": a, "b": b, "c": a + random.randint(3, 9), "d": random.randint(1, 6)}
    prompt = random.choice(_CANARY_PROMPTS).format(**words)
    if like.type == JobType.EMBEDDING:
        return {"type": JobType.EMBEDDING, "model": like.model, "input": [prompt]}, SEMANTIC
    params = {"temperature": 0, "seed": random.randint(0, 2**31 - 1), "max_tokens": CANARY_MAX_TOKENS}
    payload = {"type": like.type, "model": like.model, "params": params}
    if like.type == JobType.CHAT:
        payload["messages"] = [{"role": "user", "content": prompt}]
    else:
        payload["prompt"] = prompt
    return payload, EXACT


def _decide_canary(parent: Job, attempts: list[Job], *, past_deadline: bool) -> None:
    target = parent.verification["canary_miner"]
    reference = next((a for a in attempts if a.req_miner_id != target), None)
    probe = next((a for a in attempts if a.req_miner_id == target), None)
    if reference is None or reference.status in (JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.CANCELLED):
        _fail(parent, attempts, code="CANARY_UNANSWERED", message="The platform's engine gave no reference answer.")
        return
    if probe is None:
        if reference.status == JobStatus.COMPLETED:
            services.canary_probe_queue(parent, reference=reference)
        elif past_deadline:
            _fail(parent, attempts, code="CANARY_UNANSWERED", message="No reference answer before the TTL ran out.")
        return
    if probe.status == JobStatus.COMPLETED:
        rule = parent.verification
        right = agree(reference.result, probe.result, agreement=rule["agreement"], threshold=rule.get("threshold"))
        verdict_record(attempt=probe, kind=VerdictKind.CANARY_PASSED if right else VerdictKind.CANARY_FAILED)
        if right:
            services.settle_each([probe], refunds=[(reference, "The canary's reference answer.")])
            _close_canary(parent, reference, settled=[probe, reference])
        else:
            _fail(parent, attempts, code="CANARY_FAILED", message="The miner's answer differs from the reference.")
    elif probe.status not in JobStatus.ACTIVE or past_deadline:
        _fail(parent, attempts, code="CANARY_UNANSWERED", message="The miner gave no answer.")


def _close_canary(parent: Job, reference: Job, *, settled: list[Job]) -> None:
    now = timezone.now()
    parent.status, parent.result, parent.usage = JobStatus.COMPLETED, reference.result, reference.usage
    parent.progress, parent.completed_at = 100, now
    parent.save(update_fields=["status", "result", "usage", "progress", "completed_at", "updated_at"])
    services.jobs_ended([parent], settled=settled)
