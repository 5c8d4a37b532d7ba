"""Swarms: membership, and the coordinated tasks their members run.

A member is a miner (an agent takes part through its miner, its seat in the job machinery). A
coordinated task gives each chosen member a share: a job pinned to that member
(``jobs.services.job_submit(pinned_miner=…)``), so the escrow, lease, fencing, result and receipt
are the jobs' own. The task advances when its shares' jobs end (the jobs' ``when_finished`` hook)
and at each housekeeping pass, under a lock on its row: a share whose member went silent (its
lease lapsed, it went offline or left) goes to another member, and once every share is in the
task ends as its strategy says.
"""

import logging
import math
from contextlib import suppress
from datetime import timedelta
from decimal import Decimal
from functools import partial, update_wrapper

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from agents import services as agent_services
from agents.models import AgentStatus
from catalog.selectors import catalog_entry
from core.errors import Conflict, Invalid, NotFound, ServiceError
from jobs import agreement
from jobs import services as job_services
from jobs.models import Job, JobStatus, JobType, VerdictKind
from jobs.selectors import miners_able_to_run, with_reputation
from jobs.services import NON_RETRYABLE_ERRORS
from jobs.verification import verdict_record
from miners.models import Miner
from miners.selectors import model_served
from payments.models import PaymentStatus
from swarm import outputs
from swarm.models import (
    MemberPriority,
    ShareOutcome,
    Strategy,
    Swarm,
    SwarmMember,
    SwarmShare,
    SwarmTask,
    TaskStatus,
)

logger = logging.getLogger(__name__)

SHARE_JOB_KEY = "swarm-share"
JUDGE_JOB_KEY = "swarm-judge"
PRIORITY_ORDER = {MemberPriority.HIGH: 0, MemberPriority.NORMAL: 1, MemberPriority.LOW: 2}


# --- Membership ------------------------------------------------------------------------


def member_join(
    *,
    miner: Miner,
    role: str,
    capability: str = "",
    priority: str = MemberPriority.NORMAL,
    region: str = "",
    swarm_id=None,
    agent=None,
) -> tuple[SwarmMember, bool]:
    """The miner (or ``agent``, whose miner it is) joins the swarm ``swarm_id``, or starts a new one.
    Joining a swarm it is in already updates its role and the rest. Returns the member and whether
    it is new."""
    with transaction.atomic():
        if swarm_id is None:
            swarm = Swarm.objects.create(created_by=miner.owner)
        else:
            swarm = Swarm.objects.select_for_update().filter(pk=swarm_id).first()
            if swarm is None:
                raise NotFound("Swarm not found.", code="SWARM_NOT_FOUND")
        member = SwarmMember.objects.filter(swarm=swarm, miner=miner, left_at__isnull=True).first()
        created = member is None
        if created:
            member = SwarmMember(swarm=swarm, miner=miner)
        member.agent = agent
        member.role, member.capability, member.priority = role, capability, priority
        member.region = region or miner.region
        member.save()
    return member, created


def member_leave(*, swarm_id, miners: list[Miner]) -> list[SwarmMember]:
    """These miners leave the swarm; the shares they were running go to other members."""
    with transaction.atomic():
        if not Swarm.objects.filter(pk=swarm_id).exists():
            raise NotFound("Swarm not found.", code="SWARM_NOT_FOUND")
        members = list(
            SwarmMember.objects.select_for_update().filter(swarm=swarm_id, miner__in=miners, left_at__isnull=True)
        )
        if not members:
            raise NotFound("You are not a member of this swarm.", code="NOT_A_MEMBER")
        now = timezone.now()
        SwarmMember.objects.filter(pk__in=[m.pk for m in members]).update(left_at=now)
        for member in members:
            member.left_at = now
        running = set(
            SwarmShare.objects.filter(
                member__in=members, outcome=ShareOutcome.PENDING, task__status=TaskStatus.RUNNING
            ).values_list("task", flat=True)
        )
        for task_id in running:
            transaction.on_commit(update_wrapper(partial(advance_after_commit, task_id), advance_after_commit))
    return members


# --- Coordinated tasks -------------------------------------------------------------------


def model_check(*, model: str, job_type: str) -> None:
    """A task's model must be one the platform knows: a catalog model, or one a registered miner
    serves (online or not: members that are away make too few, a 409). Anything else is 422
    ``UNKNOWN_MODEL``. An agent task's model is the agents' own."""
    if job_type == JobType.TASK or catalog_entry(model) is not None or model_served(model):
        return
    message = f"Unknown model {model!r}: neither a catalog model nor served by any registered miner."
    raise Invalid(message, code="UNKNOWN_MODEL", errors={"task": {"model": [message]}})


def task_coordinate(
    *,
    client,
    swarm: Swarm,
    strategy: str,
    job_type: str,
    model: str,
    payload: dict,
    collaborators: int,
    timeout_seconds: int,
    inputs: list | None = None,
    consensus_threshold: float | None = None,
    judge: str = "",
    spec: dict | None = None,
    payment_amount: Decimal | None = None,
    agreement_rule: str = "",
) -> SwarmTask:
    """Start a coordinated task on ``collaborators`` of the swarm's members: each share a job pinned
    to one member, paid from the client's wallet (a short wallet is 402 and nothing starts).

    ``redundant`` and ``best_of`` give every chosen member the same job and choose members of
    distinct owners; ``split`` cuts ``inputs`` into ``collaborators`` runs in order, one job per item.
    Each share's job holds ``payment_amount`` in escrow (else its catalog price). Redundant answers
    agree by ``agreement_rule`` (``jobs.agreement``): by default ``exact`` for text, ``semantic``
    (cosine similarity) for embeddings.
    """
    if strategy == Strategy.SPLIT and not inputs:
        raise Invalid("A split task needs a non-empty list input.", code="VALIDATION_ERROR")
    model_check(model=model, job_type=job_type)
    now = timezone.now()
    with transaction.atomic():
        task = SwarmTask(
            swarm=swarm,
            client=client,
            strategy=strategy,
            task=spec if spec is not None else payload,
            job_type=job_type,
            model=model,
            payload=payload,
            inputs=inputs if strategy == Strategy.SPLIT else None,
            collaborators=collaborators,
            share_payment=payment_amount,
            consensus_threshold=consensus_threshold or settings.SWARM_CONSENSUS_THRESHOLD,
            agreement_rule=agreement_rule or (agreement.SEMANTIC if job_type == JobType.EMBEDDING else agreement.EXACT),
            judge=judge if strategy == Strategy.BEST_OF else "",
            timeout_seconds=timeout_seconds,
            deadline=now + timedelta(seconds=timeout_seconds),
            created_at=now,
        )
        members = _eligible_members(task, distinct_owners=strategy != Strategy.SPLIT)
        needed = min(collaborators, len(inputs)) if strategy == Strategy.SPLIT else collaborators
        if len(members) < needed:
            owners = " of distinct owners" if strategy != Strategy.SPLIT else ""
            raise Conflict(
                f"The swarm has {len(members)} live member(s){owners} able to run {model}; the task needs {needed}.",
                code="NOT_ENOUGH_MEMBERS",
            )
        task.collaborators = needed
        task.save(force_insert=True)
        chosen = members[:needed]
        if strategy == Strategy.SPLIT:
            for index in range(len(inputs)):
                _start_share(task, index=index, member=chosen[index * needed // len(inputs)])
        else:
            for index, member in enumerate(chosen):
                _start_share(task, index=index, member=member)
    return task


def _eligible_members(task: SwarmTask, *, distinct_owners: bool, excluding=()) -> list[SwarmMember]:
    """The swarm's current members whose miner takes work and can run the task's model, best
    first (priority, then higher reputation, then who joined first); with ``distinct_owners`` one
    per owner. A miner with no reputation yet ranks as a perfect one, as in matching."""
    able = miners_able_to_run(job=Job(model=task.model)).values("pk")
    members = (
        SwarmMember.objects.select_related("miner")
        .filter(swarm=task.swarm_id, left_at__isnull=True, miner__in=able)
        # An agent takes tasks while it is active (its miner may outlive a pause).
        .filter(Q(agent__isnull=True) | Q(agent__status=AgentStatus.ACTIVE, agent__banned_at__isnull=True))
        .exclude(pk__in=[m.pk for m in excluding])
    )
    members = list(members)
    reputations = dict(
        with_reputation(Miner.objects.filter(pk__in=[m.miner_id for m in members])).values_list("pk", "reputation")
    )

    def rank(member: SwarmMember) -> tuple:
        reputation = reputations.get(member.miner_id)
        return (PRIORITY_ORDER.get(member.priority, 1), -(1.0 if reputation is None else reputation),
                member.joined_at, member.pk)  # fmt: skip

    ordered = sorted(members, key=rank)
    if not distinct_owners:
        return ordered
    owners, chosen = {m.miner.owner_id for m in excluding}, []
    for member in ordered:
        if member.miner.owner_id not in owners:
            owners.add(member.miner.owner_id)
            chosen.append(member)
    return chosen


def _share_payload(task: SwarmTask, index: int) -> dict:
    if task.strategy != Strategy.SPLIT:
        return task.payload
    return outputs.with_input(task.payload, task.inputs[index], job_type=task.job_type)


def _start_share(task: SwarmTask, *, index: int, member: SwarmMember) -> SwarmShare:
    """Queue the member's share: a job pinned to its miner (for an agent's task, an agent task given
    to that agent alone)."""
    attempt = SwarmShare.objects.filter(task=task, index=index).count() + 1
    key = f"{SHARE_JOB_KEY}:{task.pk}:{index}:{attempt}"
    # A redundant share is paid only if its answer agrees with the consensus.
    settle_on_verdict = task.strategy == Strategy.REDUNDANT
    if task.job_type == JobType.TASK:
        job = agent_services.task_submit(
            client=task.client, task_data=_share_payload(task, index), priority="normal",
            budget=task.share_payment, ttl_seconds=task.timeout_seconds, idempotency_key=key,
            pinned_miner=member.miner, settle_on_verdict=settle_on_verdict,
        ).job  # fmt: skip
    else:
        job = job_services.job_submit(
            client=task.client, model=task.model, payload=_share_payload(task, index), job_type=task.job_type,
            ttl_seconds=task.timeout_seconds, payment_amount=task.share_payment, idempotency_key=key,
            pinned_miner=member.miner, settle_on_verdict=settle_on_verdict,
            # One attempt: a member that goes silent is replaced by another member, not waited for.
            max_attempts=1,
        ).job  # fmt: skip
    return SwarmShare.objects.create(task=task, index=index, member=member, job=job)


def advance_after_commit(task_id) -> None:
    task_advance(task_id=task_id)


def tasks_advance_for_jobs(jobs) -> None:
    """The jobs' hook (``jobs.services.when_finished``): advance the tasks whose shares (or judge) ended."""
    prefixes = (f"{SHARE_JOB_KEY}:", f"{JUDGE_JOB_KEY}:")
    task_ids = {job.idempotency_key.split(":")[1] for job in jobs if (job.idempotency_key or "").startswith(prefixes)}
    for task_id in task_ids:
        with suppress(ValidationError):  # a client's own key that only looks like a share's
            task_advance(task_id=task_id)


def tasks_advance_running() -> int:
    """Housekeeping: advance every running task (silent members, lapsed deadlines, a missed hook)."""
    running = list(SwarmTask.objects.filter(status__in=TaskStatus.ACTIVE).values_list("pk", flat=True))
    for task_id in running:
        try:
            task_advance(task_id=task_id)
        except Exception:
            logger.exception("advancing swarm task %s failed", task_id)
    return len(running)


def task_advance(*, task_id) -> SwarmTask | None:
    """Take in the shares' ended jobs, replace silent members, and end the task once every share is
    in (or its deadline passed). Idempotent, and safe from many processes at once: the task's row
    is locked."""
    with transaction.atomic():
        task = SwarmTask.objects.select_for_update().filter(pk=task_id).first()
        if task is None or task.is_terminal:
            return task
        if task.status == TaskStatus.AWAITING_JUDGEMENT:
            _take_in_judge(task)
            return task
        now = timezone.now()
        shares = _current_shares(task)
        for share in shares:
            if share.outcome == ShareOutcome.PENDING:
                _take_in(task, share, now=now)
        shares = _current_shares(task)
        if now >= task.deadline:
            _end_at_deadline(task, shares, now=now)
        elif all(share.outcome != ShareOutcome.PENDING for share in shares):
            _finish(task, shares, now=now)
    return task


def _current_shares(task: SwarmTask) -> list[SwarmShare]:
    return list(
        task.shares.exclude(outcome=ShareOutcome.REPLACED)
        .select_related("job", "job__payment", "member__miner", "member__agent")
        .order_by("index")
    )


def _take_in(task: SwarmTask, share: SwarmShare, *, now) -> None:
    """Record what became of a pending share's job: answered, failed, or its member gone silent (the
    job's one attempt lapsed or failed, or the member left or stopped taking work) and replaced."""
    job = share.job
    if job.status == JobStatus.COMPLETED:
        share.outcome, share.ended_at = ShareOutcome.ANSWERED, now
        share.save(update_fields=["outcome", "ended_at"])
        return
    member_gone = share.member.left_at is not None or not share.member.miner.accepts_work
    if job.status in JobStatus.ACTIVE and not member_gone:
        return
    if job.status in JobStatus.ACTIVE:
        job = _cancelled(share)
        if job.status == JobStatus.COMPLETED:  # it answered as it was being replaced
            share.outcome, share.ended_at = ShareOutcome.ANSWERED, now
            share.save(update_fields=["outcome", "ended_at"])
            return
    if job.error_code in NON_RETRYABLE_ERRORS:
        share.outcome, share.ended_at = ShareOutcome.FAILED, now
        share.save(update_fields=["outcome", "ended_at"])
        return
    _replace(task, share, now=now)


def _replace(task: SwarmTask, share: SwarmShare, *, now) -> None:
    """Give a silent member's share to another member: one that runs nothing else of the task when
    there is one (for redundant and best-of tasks, of another owner than the others)."""
    others = [s.member for s in _current_shares(task) if s.pk != share.pk]
    distinct = task.strategy != Strategy.SPLIT
    spare = _eligible_members(task, distinct_owners=distinct, excluding=[*others, share.member])
    if not spare and not distinct:
        spare = [m for m in _eligible_members(task, distinct_owners=False) if m.pk != share.member_id]
    share.outcome, share.ended_at = ShareOutcome.REPLACED, now
    share.save(update_fields=["outcome", "ended_at"])
    if not spare:
        share.outcome = ShareOutcome.FAILED
        share.save(update_fields=["outcome"])
        return
    try:
        _start_share(task, index=share.index, member=spare[0])
    except ServiceError as error:
        logger.warning("swarm task %s could not replace share %s: %s", task.pk, share.index, error.detail)
        share.outcome = ShareOutcome.FAILED
        share.save(update_fields=["outcome"])


def _end(task: SwarmTask, shares: list[SwarmShare], status: str, *, now, code: str = "", message: str = "") -> None:
    """End the task: shares still running are cancelled, and answers still holding escrow for a
    verdict that never came (no consensus, a cancelled task) are refunded."""
    for share in shares:
        if share.outcome == ShareOutcome.ANSWERED:
            _settle_held(share, agreed=False, reason=f"The swarm task ended ({code or status}) without a verdict.")
        if share.outcome == ShareOutcome.PENDING:
            if not share.job.is_terminal:
                _cancelled(share)
                # An answer that came in meanwhile is not judged: refunded.
                _settle_held(share, agreed=False, reason=f"The swarm task ended ({code or status}) without a verdict.")
            share.outcome, share.ended_at = ShareOutcome.CANCELLED, now
            share.save(update_fields=["outcome", "ended_at"])
    task.status, task.completed_at = status, now
    task.error_code, task.error_message = code, message
    task.save(
        update_fields=["status", "completed_at", "error_code", "error_message", "output", "agreement", "updated_at"]
    )


def _cancelled(share: SwarmShare) -> Job:
    """Cancel a share's job (its escrow refunded); the job as it is now, which may have ended first."""
    with suppress(Conflict):
        job_services.job_cancel(job_id=share.job_id)
    share.job = Job.objects.select_related("payment").get(pk=share.job_id)
    return share.job


def _end_at_deadline(task: SwarmTask, shares: list[SwarmShare], *, now) -> None:
    """Past its timeout a redundant or best-of task goes on with the answers it has; else it fails."""
    if task.strategy != Strategy.SPLIT and any(s.outcome == ShareOutcome.ANSWERED for s in shares):
        _finish(task, shares, now=now)
        return
    _end(task, shares, TaskStatus.FAILED, now=now, code="TIMEOUT", message="The task ran past its timeout.")


def _finish(task: SwarmTask, shares: list[SwarmShare], *, now) -> None:
    """Every share is in (or the deadline passed): end the task as its strategy says."""
    answered = [s for s in shares if s.outcome == ShareOutcome.ANSWERED]
    if task.strategy == Strategy.SPLIT:
        if len(answered) < len(shares):
            missing = [s.index for s in shares if s.outcome != ShareOutcome.ANSWERED]
            _end(task, shares, TaskStatus.FAILED, now=now, code="SHARE_FAILED", message=f"Items {missing} failed.")
            return
        task.output = [outputs.output_of(s.job) for s in shares]
        _end(task, shares, TaskStatus.COMPLETED, now=now)
        return
    if task.strategy == Strategy.REDUNDANT:
        _decide_consensus(task, shares, answered, now=now)
        return
    if not answered:
        _end(task, shares, TaskStatus.FAILED, now=now, code="NO_ANSWER", message="No member answered.")
        return
    for share in shares:
        if share.outcome == ShareOutcome.PENDING:
            share.outcome, share.ended_at = ShareOutcome.FAILED, now
            share.save(update_fields=["outcome", "ended_at"])
    task.status = TaskStatus.AWAITING_JUDGEMENT
    task.save(update_fields=["status", "updated_at"])
    if task.judge != "client":
        _start_judge(task, answered)


def _decide_consensus(task: SwarmTask, shares: list[SwarmShare], answered: list[SwarmShare], *, now) -> None:
    """A redundant task's vote: the largest group of answers agreeing with one of them wins when it
    holds at least ``consensus_threshold`` of the collaborators and no other group is as large. Its
    members' verdicts are ``agreed`` and their escrow is released; the answers outside it are
    ``outvoted``: their miners' reputation drops and their escrow goes back to the client. Without a
    consensus no one is judged, and every answer is refunded."""
    required = max(1, math.ceil(task.consensus_threshold * task.collaborators - 1e-9))
    results = [share.job.result for share in answered]
    rule = {"agreement": task.agreement_rule, "threshold": None}
    found = agreement.consensus(results, required=required, **rule)
    dissenting = [answered[i] for i in found.dissenters(len(answered))]
    tied = (
        found.group
        and agreement.consensus([s.job.result for s in dissenting], required=len(found.group), **rule).reached
    )
    task.agreement = len(found.group) / task.collaborators
    if not found.reached or tied:
        why = "two groups of answers are as large" if tied else f"{len(found.group)} of {task.collaborators} agree"
        _end(task, shares, TaskStatus.FAILED, now=now, code="NO_CONSENSUS", message=f"No consensus: {why}.")
        return
    winners = [answered[i] for i in found.group]
    for share, verdict, outcome in [
        *((s, VerdictKind.AGREED, ShareOutcome.AGREED) for s in winners),
        *((s, VerdictKind.OUTVOTED, ShareOutcome.OUTVOTED) for s in dissenting),
    ]:
        verdict_record(attempt=share.job, kind=verdict)
        _settle_held(share, agreed=outcome == ShareOutcome.AGREED)
        share.outcome = outcome
        share.save(update_fields=["outcome"])
    task.output = outputs.output_of(answered[found.representative].job)
    _end(task, shares, TaskStatus.COMPLETED, now=now)


def _settle_held(share: SwarmShare, *, agreed: bool, reason: str = "") -> None:
    """Release (``agreed``) or refund the escrow a redundant share's job holds for its verdict."""
    job = share.job
    if job.settles_on_verdict and job.payment_id and job.payment.status == PaymentStatus.ESCROWED:
        share.job = job_services.job_verdict_settle(job_id=job.pk, agreed=agreed, reason=reason)


# --- Best of n: the judge ------------------------------------------------------------------


def _start_judge(task: SwarmTask, answered: list[SwarmShare]) -> None:
    prompt = outputs.judge_prompt(task.payload, [outputs.output_of(s.job) for s in answered])
    task.judge_job = job_services.job_submit(
        client=task.client,
        model=task.judge,
        payload={"type": JobType.INFERENCE, "model": task.judge, "prompt": prompt, "params": {"max_tokens": 8}},
        ttl_seconds=max(1, int((task.deadline - timezone.now()).total_seconds())),
        idempotency_key=f"{JUDGE_JOB_KEY}:{task.pk}",
    ).job
    task.save(update_fields=["judge_job", "updated_at"])


def _take_in_judge(task: SwarmTask) -> None:
    job = task.judge_job
    now = timezone.now()
    shares = [s for s in _current_shares(task) if s.outcome == ShareOutcome.ANSWERED]
    if job is None:
        if now >= task.deadline:
            _end(task, shares, TaskStatus.FAILED, now=now, code="TIMEOUT", message="No choice before the timeout.")
        return
    if job.status in JobStatus.ACTIVE:
        return
    choice = outputs.judge_choice(job.result, count=len(shares)) if job.status == JobStatus.COMPLETED else None
    if choice is None:
        _end(task, shares, TaskStatus.FAILED, now=now, code="NO_JUDGEMENT", message="The judge named no answer.")
        return
    _choose(task, shares, shares[choice], now=now)


def task_choose(*, task: SwarmTask, index: int) -> SwarmTask:
    """The client judges a best-of task: the answer at ``index`` (of the answered shares) wins."""
    with transaction.atomic():
        task = SwarmTask.objects.select_for_update().get(pk=task.pk)
        if task.strategy != Strategy.BEST_OF or task.judge != "client":
            raise Conflict("Only a best-of task judged by its client takes a choice.", code="NOT_CLIENT_JUDGED")
        if task.status != TaskStatus.AWAITING_JUDGEMENT:
            raise Conflict(f"The task is {task.status}, not awaiting a choice.", code="NOT_AWAITING_JUDGEMENT")
        answered = [s for s in _current_shares(task) if s.outcome == ShareOutcome.ANSWERED]
        if not 0 <= index < len(answered):
            raise Invalid(
                f"Choose one of the {len(answered)} answers (0 to {len(answered) - 1}).",
                code="VALIDATION_ERROR",
                errors={"choice": ["No such answer."]},
            )
        _choose(task, answered, answered[index], now=timezone.now())
    return task


def _choose(task: SwarmTask, answered: list[SwarmShare], winner: SwarmShare, *, now) -> None:
    for share in answered:
        share.outcome = ShareOutcome.CHOSEN if share.pk == winner.pk else ShareOutcome.NOT_CHOSEN
        share.save(update_fields=["outcome"])
    task.output = outputs.output_of(winner.job)
    _end(task, answered, TaskStatus.COMPLETED, now=now)


def task_cancel(*, task: SwarmTask) -> SwarmTask:
    """The client stops a task: shares still running are cancelled and refunded."""
    with transaction.atomic():
        task = SwarmTask.objects.select_for_update().get(pk=task.pk)
        if task.is_terminal:
            raise Conflict(f"The task is {task.status}.", code="TASK_NOT_CANCELABLE")
        if task.judge_job_id and not task.judge_job.is_terminal:
            job_services.job_cancel(job_id=task.judge_job_id)
        _end(task, _current_shares(task), TaskStatus.CANCELLED, now=timezone.now(), message="Cancelled by its client.")
    return task
