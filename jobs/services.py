"""Every change to a job: submit, cancel, claim, complete, fail, expire and requeue.

Each function is one transaction. A running job belongs to the miner holding its lease:
only that miner's current attempt (fenced by ``lease_token``) may complete or fail it, so a
job is completed at most once however many attempts ran. A miner's heartbeat, deregistration,
going offline or ban are here too, since they extend or end the attempts the miner holds.
"""

import hashlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, transaction
from django.db.models import CharField, F, Func, Q, prefetch_related_objects
from django.utils import timezone

from catalog import payloads
from catalog.selectors import catalog_entry
from core import rawsql
from core.crypto import signing
from core.errors import Conflict, Invalid, NotFound, ServiceError
from jobs import events, feed, matching, sql, wakeup
from jobs.agreement import verification_request
from jobs.models import FailedAttempt, Job, JobPriority, JobStatus, JobType, Receipt
from jobs.receipts import receipts_sign, receipts_store
from jobs.selectors import QUEUE_POSITION_CAP, claimable_jobs, queue_position
from miners import selectors as miner_selectors
from miners import services as miner_services
from miners.capabilities import cuda_code
from miners.models import Miner, ServedModel
from payments.models import Payment, PaymentStatus
from payments.services import (
    credits,
    escrow_hold,
    escrow_refund,
    escrows_end,
    escrows_refund,
    escrows_settle,
    new_payment_id,
)

logger = logging.getLogger(__name__)

# Failures that another attempt cannot fix: the job fails at once.
NON_RETRYABLE_ERRORS = frozenset(
    {"INPUT_TOO_LONG", "INVALID_PAYLOAD", "INVALID_PARAMS", "UNSUPPORTED_MODEL", "UNSUPPORTED_TASK"}
)
# Failures an in-cluster worker reports that are not held against it: the request can't be run,
# or the host is shutting down. Its engine is the platform's own; an HTTP miner names its own
# codes, so every failure it reports counts (``job_fail``'s ``blame``).
TRUSTED_BLAMELESS_ERRORS = NON_RETRYABLE_ERRORS | {"MINER_SHUTDOWN"}


@dataclass(frozen=True)
class Submission:
    job: Job
    created: bool
    queue_position: int | None = None


def _fingerprint(**request) -> str:
    return hashlib.sha256(signing.canonical_json(request)).hexdigest()


def job_submit(
    *,
    client,
    model: str,
    payload: dict,
    job_type: str = JobType.INFERENCE,
    constraints: dict | None = None,
    priority: int = JobPriority.NORMAL,
    ttl_seconds: int | None = None,
    max_attempts: int | None = None,
    idempotency_key: str | None = None,
    payment_amount: Decimal | None = None,
    job_id: uuid.UUID | None = None,
    key_is_new: bool = False,
    pinned_miner: Miner | None = None,
    min_reputation: float | None = None,
    verification: dict | None = None,
    canary_for: Miner | None = None,
    settle_on_verdict: bool = False,
) -> Submission:
    """Queue a job. With an ``idempotency_key`` a repeated request returns the first job. A caller
    may choose the job's id (``job_id``), to follow its events from before it can have any. One
    that knows its key unused (``key_is_new``, a caller holding a lock that makes it so) saves
    looking it up first and, inside its transaction, the savepoint that makes a repeat recoverable:
    a repeat is then an ``IntegrityError`` that aborts the caller's transaction. A job
    pinned to a miner (``pinned_miner``) is offered to that miner only; one with a
    ``min_reputation`` only to miners whose reputation is at least that. A job that settles on a
    verdict (``settle_on_verdict``) keeps its escrow past completion until ``job_verdict_settle``.

    A verified job (``verification``: ``redundancy`` k, ``agreement``, ``threshold``; see
    ``jobs.agreement.verification_request``) is not queued itself: it runs as k attempts, child
    jobs that miners of distinct owners claim, each with its price in escrow, and completes with
    the answer a majority of them agree on (``jobs.verification``).

    A model of the catalog must be enabled and fit the job, and the job gets the model's default
    parameters for those it does not set; other models are for the miners that bring them. The job's price (``payment_amount``, else the catalog's price for its
    ``max_tokens``) is held in escrow from the client's wallet in the same transaction.
    """
    constraints = constraints or {}
    if verification is not None:
        verification = verification_request(verification)
        if canary_for is not None:
            verification["canary_miner"] = canary_for.pk
    entry = catalog_entry(model)
    if entry is not None:
        _check_against_catalog(entry, job_type=job_type, payload=payload)
        if entry.default_params and entry.generates_text:
            payload = payloads.with_default_params(payload, entry.default_params)
    ttl_seconds = ttl_seconds or settings.JOB_DEFAULT_TTL_SECONDS
    fingerprint = ""
    if idempotency_key:
        # Only keyed submissions are compared with a replay.
        fingerprint = _fingerprint(
            type=job_type, model=model, payload=payload, constraints=constraints, priority=priority, ttl=ttl_seconds,
            payment=str(payment_amount) if payment_amount is not None else None,
            **({"verification": verification, "min_reputation": min_reputation} if verification else {}),
        )  # fmt: skip
        existing = None if key_is_new else Job.objects.filter(client=client, idempotency_key=idempotency_key).first()
        if existing is not None:
            return _replayed(existing, fingerprint)

    unit_price = entry.price_per_1k_tokens if entry is not None and entry.price_per_1k_tokens > 0 else None
    price = _catalog_price(entry, unit_price, payload)
    if payment_amount is not None:
        if payment_amount < price:
            raise Invalid(
                f"This job costs up to {price} AITBC at {entry.name}'s price; payment_amount may not be less.",
                code="INSUFFICIENT_PAYMENT",
                errors={"payment_amount": [f"Ensure this value is at least {price}."]},
            )
        price = payment_amount
    now = timezone.now()
    job = Job(
        id=job_id or uuid.uuid4(),
        client=client,
        type=job_type,
        model=model,
        payload=payload,
        constraints=constraints,
        priority=priority,
        rank_at=now - timedelta(seconds=priority * settings.JOB_PRIORITY_AGEING_SECONDS),
        ttl_seconds=ttl_seconds,
        expires_at=now + timedelta(seconds=ttl_seconds),
        max_attempts=max_attempts or settings.JOB_MAX_ATTEMPTS,
        req_gpu=str(constraints.get("gpu") or ""),
        req_min_vram_gb=constraints.get("min_vram_gb"),
        req_cuda_code=cuda_code(constraints.get("cuda")),
        req_region=str(constraints.get("region") or ""),
        req_max_price=constraints.get("max_price"),
        req_miner=pinned_miner,
        req_min_reputation=min_reputation,
        settles_on_verdict=settle_on_verdict,
        idempotency_key=idempotency_key or None,
        request_fingerprint=fingerprint,
        created_at=now,
    )
    if verification:
        job.req_miner = None
        return _submit_verified(
            job, verification=verification, price=price, unit_price=unit_price, pinned_miner=pinned_miner
        )
    if price:
        job.price, job.unit_price = credits(price), unit_price
        job.payment_id = new_payment_id()
    try:
        with transaction.atomic() if price else nullcontext():
            if connection.vendor == "postgresql":
                position = _insert_postgres(job, key_is_new=key_is_new)
            else:
                with transaction.atomic():
                    job.save(force_insert=True)
                    wakeup.announce(job)
                position = None
            if price:
                job.payment = escrow_hold(job=job, client=client, amount=job.price, payment_id=job.payment_id)
        if position is None:
            position = queue_position(job=job)
    except IntegrityError:
        if not idempotency_key:
            raise
        return _replayed(Job.objects.get(client=client, idempotency_key=idempotency_key), fingerprint)
    wakeup.queued(model)
    transaction.on_commit(partial(feed.publish_jobs_submitted, [job]))
    return Submission(job=job, created=True, queue_position=position)


def _submit_verified(
    parent: Job, *, verification: dict, price: Decimal, unit_price, pinned_miner: Miner | None
) -> Submission:
    """Store a verified job running, and its attempts queued, each with its price in escrow, in
    one transaction. A canary queues only its reference attempt, pinned to ``pinned_miner``."""
    now = parent.created_at
    parent.verification = verification
    parent.status, parent.started_at = JobStatus.RUNNING, now
    count = 1 if "canary_miner" in verification else verification["redundancy"]
    attempts = [
        attempt_of(parent, price=price, unit_price=unit_price, now=now, pinned_miner=pinned_miner) for _ in range(count)
    ]
    if price:
        parent.price, parent.unit_price = credits(price) * verification["redundancy"], unit_price
    try:
        with transaction.atomic():
            parent.save(force_insert=True)
            for attempt in attempts:
                _store_attempt(attempt)
    except IntegrityError:
        if not parent.idempotency_key:
            raise
        existing = Job.objects.get(client=parent.client, idempotency_key=parent.idempotency_key)
        return _replayed(existing, parent.request_fingerprint)
    wakeup.queued(parent.model)
    transaction.on_commit(partial(feed.publish_jobs_submitted, [parent]))
    return Submission(job=parent, created=True)


def attempt_of(parent: Job, *, price, unit_price, now, pinned_miner: Miner | None = None) -> Job:
    """A new attempt (unsaved) of ``parent``: the same job, queued until the parent's deadline."""
    return Job(
        id=uuid.uuid4(), parent=parent, client=parent.client, type=parent.type, model=parent.model,
        payload=parent.payload, constraints=parent.constraints, priority=parent.priority, rank_at=parent.rank_at,
        ttl_seconds=max(1, int((parent.expires_at - now).total_seconds())), expires_at=parent.expires_at,
        max_attempts=parent.max_attempts, req_gpu=parent.req_gpu, req_min_vram_gb=parent.req_min_vram_gb,
        req_cuda_code=parent.req_cuda_code, req_region=parent.req_region, req_max_price=parent.req_max_price,
        req_miner=pinned_miner, req_min_reputation=parent.req_min_reputation, created_at=now,
        price=credits(price) if price else None, unit_price=unit_price if price else None,
        payment_id=new_payment_id() if price else None,
    )  # fmt: skip


def _store_attempt(attempt: Job) -> None:
    """Insert and announce an attempt, holding its price in escrow, inside the caller's transaction."""
    attempt.save(force_insert=True)
    wakeup.announce(attempt)
    if attempt.price:
        attempt.payment = escrow_hold(
            job=attempt, client=attempt.client, amount=attempt.price, payment_id=attempt.payment_id
        )


def _catalog_price(entry, unit_price, payload: dict) -> Decimal:
    """What the catalog charges at most for the job: its price per 1k tokens times the tokens it
    may produce (generation) or read (embeddings: the model's limit for every input)."""
    if unit_price is None:
        return Decimal(0)
    if not entry.generates_text:
        inputs = payload.get("input")
        tokens = entry.max_tokens * (len(inputs) if isinstance(inputs, list) else 1)
    else:
        max_tokens = payloads.requested_max_tokens(payload)
        tokens = max_tokens if max_tokens is not None else entry.default_max_tokens
    return credits(unit_price * tokens / 1000)


def _check_against_catalog(entry, *, job_type: str, payload: dict) -> None:
    if not entry.enabled:
        raise Invalid(f"Model {entry.name!r} is disabled.", code="MODEL_UNAVAILABLE", errors={"model": ["Disabled."]})
    try:
        payloads.check_fits_model(
            payload, payload_type=job_type, model=entry.name, task=entry.task, max_tokens=entry.max_tokens
        )
    except payloads.PayloadError as error:
        field = {error.field: [error.message]}
        raise Invalid(
            error.message, code=error.code, errors={"params": field} if error.code == "INVALID_PARAMS" else field
        ) from None


def _insert_postgres(job: Job, *, key_is_new: bool = False) -> int:
    """Insert and announce the job in one statement (its own transaction outside an atomic
    block); return its queue position."""
    statement, params = sql.insert_and_announce(job)
    # Inside a caller's transaction, a savepoint keeps a duplicate Idempotency-Key recoverable
    # (unless the caller knows its key unused).
    savepoint = connection.in_atomic_block and not (key_is_new and job.idempotency_key)
    with transaction.atomic() if savepoint else nullcontext(), connection.cursor() as cursor:
        cursor.execute(statement, [*params, wakeup.CHANNEL, QUEUE_POSITION_CAP])
        ahead = cursor.fetchone()[1]
    job._state.adding, job._state.db = False, DEFAULT_DB_ALIAS
    return ahead + 1


def _replayed(job: Job, fingerprint: str) -> Submission:
    if job.request_fingerprint != fingerprint:
        raise Conflict("This Idempotency-Key was already used with a different request.", code="IDEMPOTENCY_KEY_REUSED")
    return Submission(job=job, created=False)


@transaction.atomic
def job_cancel(*, job_id) -> Job:
    job = Job.objects.select_for_update().filter(pk=job_id).first()
    if job is None:
        raise NotFound("Job not found.", code="JOB_NOT_FOUND")
    if job.is_terminal:
        raise Conflict(f"Job is {job.status} and can no longer be cancelled.", code="JOB_NOT_CANCELABLE")
    if job.parent_id:
        raise Conflict("This is an attempt of a verified job: cancel that job instead.", code="JOB_NOT_CANCELABLE")
    now = timezone.now()
    ended = [job]
    if job.verification:
        # Its attempts end with it; those that answered are refunded too, their answers never judged.
        attempts = Job.objects.select_for_update(of=("self",)).filter(parent=job)
        for attempt in attempts.exclude(status__in=[JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.CANCELLED]):
            refund_escrow(attempt, reason="The client cancelled the verified job.")
            if attempt.status in JobStatus.ACTIVE:
                attempt.status, attempt.completed_at, attempt.lease_expires_at = JobStatus.CANCELLED, now, None
                attempt.save(update_fields=["status", "completed_at", "lease_expires_at", "updated_at"])
                ended.append(attempt)
    job.status = JobStatus.CANCELLED
    job.completed_at = now
    job.lease_expires_at = None
    refund_escrow(job, reason="The client cancelled the job.")
    job.save(update_fields=["status", "completed_at", "lease_expires_at", "updated_at"])
    _jobs_changed(ended)
    return job


def job_attach_payment(
    *, job_id, client, amount, currency: str = "AITBC", payment_method: str = "aitbc_token"
) -> Payment:
    """Pay for a job submitted without a price (``POST /v1/payments``): hold ``amount`` in escrow."""
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id, client=client).first()
        if job is None:
            raise NotFound("Job not found.", code="JOB_NOT_FOUND")
        if job.payment_id:
            raise Conflict("This job is already paid for.", code="PAYMENT_EXISTS")
        if job.is_terminal:
            raise Conflict(f"Job is {job.status}: there is nothing left to pay for.", code="JOB_TERMINAL")
        if credits(amount) <= 0:
            raise Invalid("The amount must be positive.", code="INVALID_AMOUNT", errors={"amount": ["Must be > 0."]})
        job.price = credits(amount)
        job.payment = escrow_hold(
            job=job, client=client, amount=job.price, payment_id=new_payment_id(), currency=currency,
            payment_method=payment_method,
        )  # fmt: skip
        job.save(update_fields=["price", "payment", "updated_at"])
    return job.payment


def _locked_job_with_escrow(job_id) -> tuple[Job, Payment]:
    job = Job.objects.select_for_update(of=("self",)).select_related("miner__owner").filter(pk=job_id).first()
    if job is None:
        raise NotFound("Job not found.", code="JOB_NOT_FOUND")
    payment = Payment.objects.filter(payment_id=job.payment_id).first() if job.payment_id else None
    if payment is None:
        raise NotFound("This job has no payment.", code="PAYMENT_NOT_FOUND")
    if payment.status != PaymentStatus.ESCROWED:
        raise Conflict(f"The payment is {payment.status}, no longer in escrow.", code="PAYMENT_NOT_ESCROWED")
    return job, payment


def job_payment_release(*, job_id) -> Payment:
    """Settle a completed job whose escrow is still held (completion normally settles it)."""
    with transaction.atomic():
        job, payment = _locked_job_with_escrow(job_id)
        if job.status != JobStatus.COMPLETED or job.miner is None:
            raise Conflict(f"Job is {job.status}: only a completed job's escrow is released.", code="JOB_NOT_COMPLETED")
        if awaits_verdict(job):
            raise Conflict("This job is paid once its answer is judged.", code="JOB_BEING_VERIFIED")
        _settle([(job, _charge(job))], miner=job.miner)
        _announce(_payment_events([job]))
    return Payment.objects.get(pk=payment.pk)


def awaits_verdict(job: Job) -> bool:
    """Whether a completed job's escrow waits for a verdict on its answer: an attempt of a verified
    job, or a job submitted to settle on a verdict (``settle_on_verdict``)."""
    return job.parent_id is not None or job.settles_on_verdict


def job_verdict_settle(*, job_id, agreed: bool, reason: str = "") -> Job:
    """Settle the escrow of a completed job that settles on a verdict: its miner is paid the charge
    when its answer ``agreed``, else the client gets it all back (an outvoted answer is paid nothing)."""
    with transaction.atomic():
        job, _ = _locked_job_with_escrow(job_id)
        if job.status != JobStatus.COMPLETED or not job.settles_on_verdict or job.miner is None:
            raise Conflict("Only a completed job settling on a verdict is settled so.", code="NOT_AWAITING_VERDICT")
        if agreed:
            _settle([(job, _charge(job))], miner=job.miner)
        else:
            refund_escrow(job, reason=reason or "The miner's answer was outvoted.")
        _announce(_payment_events([job]))
    return job


def job_payment_refund(*, job_id, reason: str) -> Payment:
    """Refund a finished, unpaid job's escrow (failed, expired and cancelled jobs refund by themselves)."""
    with transaction.atomic():
        job, payment = _locked_job_with_escrow(job_id)
        if job.status in JobStatus.ACTIVE:
            raise Conflict(f"Job is {job.status}: cancel it instead, which refunds its escrow.", code="JOB_ACTIVE")
        if job.status == JobStatus.COMPLETED:
            raise Conflict("A completed job's escrow is released to its miner, not refunded.", code="JOB_COMPLETED")
        refund_escrow(job, reason=reason)
        _announce(_payment_events([job]))
    return Payment.objects.get(pk=payment.pk)


def refund_escrow(job: Job, *, reason: str) -> None:
    """Give a job that ends unpaid its escrow back (once, whoever calls it)."""
    if job.payment_id:
        payment = escrow_refund(job=job, reason=reason)
        if payment is not None:
            job.payment = payment


def refund_escrows(refunds: list[tuple[Job, str]]) -> None:
    """``refund_escrow`` for several jobs, ``(job, reason)`` each, all at once."""
    refunded = escrows_refund(refunds=[(job, reason) for job, reason in refunds if job.payment_id])
    for job, _ in refunds:
        if job.pk in refunded:
            job.payment = refunded[job.pk]


def settle_each(jobs: list[Job], *, refunds: list[tuple[Job, str]] = ()) -> list[Decimal]:
    """Pay each of these completed, paid jobs' escrows to its own miner's owner (the attempts of a
    verified job that agreed, a canary answered right), all in one settlement; their charges, in
    order. ``refunds``: ``refund_escrow`` for these ``(job, reason)`` too, in the same statement
    (on PostgreSQL)."""
    charges = [(job, _charge(job), job.miner.owner) for job in jobs if job.payment_id]
    if not charges and not refunds:
        return []
    paid, refunded = escrows_end(charges=charges, refunds=list(refunds))
    unpaid = [job.pk for job, charge, _ in charges if job.pk not in paid or paid[job.pk].amount_paid != charge]
    if unpaid:
        raise RuntimeError(f"escrow of jobs {unpaid} did not settle as charged")
    for job, _, _ in charges:
        job.payment = paid[job.pk]
    for job, _ in refunds:
        if job.pk in refunded:
            job.payment = refunded[job.pk]
    return [charge for _, charge, _ in charges]


def jobs_ended(jobs: list[Job], *, settled: list[Job] = ()) -> None:
    """Announce jobs a verification ended (as every change does, in its transaction), and the
    payments of ``settled`` jobs, which ended before."""
    if _event_listeners:
        _announce(job_events(jobs) + _payment_events(list(settled)))
    transaction.on_commit(partial(_publish_statuses, jobs))


def canary_submit(
    *, client, model: str, job_type: str, payload: dict, verification: dict, target: Miner, reference: Miner
) -> Job:
    """Store a canary for ``target``: a verified job of the canary account whose first attempt is
    pinned to ``reference`` (an in-cluster worker); the attempt asking ``target`` follows once the
    reference answers (``canary_probe_queue``)."""
    return job_submit(
        client=client, model=model, payload=payload, job_type=job_type, verification=verification,
        pinned_miner=reference, canary_for=target,
    ).job  # fmt: skip


def canary_probe_queue(parent: Job, *, reference: Job) -> Job:
    """Queue the attempt of a canary that asks its miner, once the reference has answered."""
    price = reference.price or Decimal(0)
    probe = attempt_of(
        parent, price=price, unit_price=reference.unit_price, now=timezone.now(),
        pinned_miner=Miner.objects.get(pk=parent.verification["canary_miner"]),
    )  # fmt: skip
    _store_attempt(probe)
    wakeup.queued(probe.model)
    return probe


# Called as ``listener(events)`` inside the transaction that ends jobs or settles their escrow, with
# ``events`` a list of ``(event_type, job)``: "job.completed", "job.failed", "job.cancelled",
# "job.expired", "payment.released", "payment.refunded". What a listener records is committed or
# rolled back with the change itself (a free job's completion on PostgreSQL is one statement in
# autocommit, kept so on the hot path: its listeners run right after it). Higher apps, which this
# one may not import, add theirs from their ``AppConfig.ready()`` (``webhooks`` queues its deliveries).
_event_listeners: list[Callable[[list[tuple[str, Job]]], None]] = []


def when_jobs_end(listener: Callable[[list[tuple[str, Job]]], None]) -> None:
    """Have ``listener(events)`` called in the transaction of each job's end and each escrow's settlement."""
    if listener not in _event_listeners:
        _event_listeners.append(listener)


def job_events(jobs: list[Job]) -> list[tuple[str, Job]]:
    """What ended among ``jobs`` as they are now: each terminal job, then each settled payment."""
    return [(f"job.{job.status}", job) for job in jobs if job.status in JobStatus.TERMINAL] + _payment_events(jobs)


def _payment_events(jobs: list[Job]) -> list[tuple[str, Job]]:
    ended = (PaymentStatus.RELEASED, PaymentStatus.REFUNDED)
    return [
        (f"payment.{job.payment.status}", job)
        for job in jobs
        if job.payment_id and Job.payment.is_cached(job) and job.payment is not None and job.payment.status in ended
    ]


def _announce(events: list[tuple[str, Job]]) -> None:
    if events:
        for listener in _event_listeners:
            listener(events)


def _jobs_changed(jobs: list[Job]) -> None:
    """Jobs changed in the current transaction: the listeners hear of those that ended now, in it;
    the jobs' WebSocket subscribers once it commits."""
    if jobs:
        if _event_listeners:
            _announce(job_events(jobs))
        transaction.on_commit(partial(_publish_statuses, jobs))


def _publish_statuses(jobs: list[Job]) -> None:
    # A status event shows the payment's state: read the payments the jobs do not hold yet (those
    # of paid jobs just claimed), all at once, here rather than where the event is built.
    unread = [job for job in jobs if job.payment_id and not Job.payment.is_cached(job)]
    if unread:
        prefetch_related_objects(unread, "payment")
    events.publish_job_statuses(jobs)
    feed.publish_jobs_changed(jobs)
    ended = [job for job in jobs if job.is_terminal]
    for listener in _finished_listeners if ended else ():
        try:
            listener(ended)
        except Exception:
            logger.exception("a listener for finished jobs failed")


# Called as ``listener(jobs)`` with jobs that reached a terminal state, once that is committed. Higher
# apps, which this one may not import, add theirs from their ``AppConfig.ready()`` (agents advance the
# workflow executions the jobs are steps of). A listener's failure is logged, never the caller's.
_finished_listeners: list[Callable[[list[Job]], None]] = []


def when_finished(listener: Callable[[list[Job]], None]) -> None:
    """Have ``listener(jobs)`` called with the jobs that ended, after each change commits."""
    if listener not in _finished_listeners:
        _finished_listeners.append(listener)


# --- Claims ----------------------------------------------------------------------------


def job_claim(*, miner: Miner, limit: int = 1, job_id=None, models: list[str] | None = None) -> list[Job]:
    """Lease up to ``limit`` of the best queued jobs this miner can run (or the job ``job_id``),
    only of ``models`` when given (a worker batching one model's jobs).

    The miner's row is locked so that its concurrency limit holds against parallel polls;
    the jobs are taken with ``FOR UPDATE SKIP LOCKED``, so concurrent miners never wait for,
    or double-claim, each other's jobs.
    """
    limit = min(limit, settings.MINER_MAX_CLAIM_BATCH)
    if limit <= 0:
        return []
    now = timezone.now()
    lease_until = now + timedelta(seconds=settings.JOB_LEASE_SECONDS)
    if connection.vendor == "postgresql":
        # One statement: outside a transaction it is its own, so the claim is one round trip.
        jobs = _claim_postgres(
            miner_pk=miner.pk, limit=limit, job_id=job_id, models=models, now=now, lease_until=lease_until
        )
    else:
        with transaction.atomic():
            jobs = _claim_portable(
                miner_pk=miner.pk,
                limit=limit,
                job_id=job_id,
                models=models,
                now=now,
                lease_until=lease_until,
                headstart=settings.MATCHING_REPUTATION_HEADSTART_SECONDS,
            )
    for job in jobs:
        job.miner = miner
    _jobs_changed(jobs)
    jobs.sort(key=lambda j: j.rank_at)
    return jobs


def _claim_postgres(*, miner_pk: int, limit: int, job_id, models, now, lease_until) -> list[Job]:
    params = {
        "miner": miner_pk, "limit": limit, "job_id": job_id, "models": models, "now": now, "lease_until": lease_until,
        "headstart": settings.MATCHING_REPUTATION_HEADSTART_SECONDS,
    }  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(sql.CLAIM, params)
        return _jobs_with_payments(cursor.fetchall())


def _jobs_with_payments(rows) -> list[Job]:
    """Jobs from rows of their columns, then their payments' (NULL for a free job)."""
    jobs = rawsql.instances(Job, rows)
    paid = [(job, row) for job, row in zip(jobs, rows, strict=True) if job.payment_id]
    if paid:
        payments = rawsql.instances(Payment, [row for _, row in paid], start=len(Job._meta.concrete_fields))
        for (job, _), payment in zip(paid, payments, strict=True):
            job.payment = payment
    return jobs


def _claim_portable(*, miner_pk: int, limit: int, job_id, models, now, lease_until, headstart: float) -> list[Job]:
    # SQLite serialises writers (IMMEDIATE transactions), so no row locks are needed here.
    miner = Miner.objects.filter(pk=miner_pk).first()
    if miner is None or not miner.accepts_work:
        return []
    running = Job.objects.filter(miner=miner_pk, status=JobStatus.RUNNING).count()
    limit = min(limit, miner.max_concurrent_jobs - running)
    if limit <= 0:
        return []
    candidates = claimable_jobs(miner=miner, now=now).order_by("rank_at")
    candidates = matching.reputation_headstart_filter(candidates, miner=miner, now=now, headstart=headstart)
    if job_id is not None:
        candidates = candidates.filter(pk=job_id)
    if models is not None:
        candidates = candidates.filter(model__in=models)
    ids, verified_jobs = [], set()
    for pk, parent_id in candidates.values_list("id", "parent_id").iterator(chunk_size=limit):
        if parent_id is not None:
            if parent_id in verified_jobs:
                continue  # one attempt of each verified job at most
            verified_jobs.add(parent_id)
        ids.append(pk)
        if len(ids) == limit:
            break
    Job.objects.filter(pk__in=ids, status=JobStatus.QUEUED).update(
        status=JobStatus.RUNNING,
        miner=miner_pk,
        attempt=F("attempt") + 1,
        lease_token=Func(template="lower(hex(randomblob(16)))", output_field=CharField()),
        lease_expires_at=lease_until,
        started_at=now,
        progress=0,
        updated_at=now,
    )
    return list(Job.objects.filter(pk__in=ids).select_related("payment"))


def jobs_lease_to(assignments: list[tuple[Miner, object]]) -> list[Job]:
    """Lease each job of ``(miner, job_id)`` pairs to the miner chosen for it: a dispatcher's batch
    (agents' task assignment), where ``job_claim`` is a miner asking for its own. A job is leased
    only while queued and to a miner that takes work, serves its model, meets its constraints and
    has a free slot (each miner's jobs in the order given); the others are left as they are. No
    reputation head start: that orders miners claiming for themselves, and here the dispatcher chose.
    Returns the leased jobs. Two statements on PostgreSQL however many pairs, in one transaction."""
    if not assignments:
        return []
    now = timezone.now()
    lease_until = now + timedelta(seconds=settings.JOB_LEASE_SECONDS)
    miners = {miner.pk: miner for miner, _ in assignments}
    if connection.vendor == "postgresql":
        params = {
            "jobs": [str(job_id) for _, job_id in assignments],
            "miners": [miner.pk for miner, _ in assignments],
            "now": now,
            "lease_until": lease_until,
        }
        with transaction.atomic(savepoint=False), connection.cursor() as cursor:
            cursor.execute(sql.LOCK_MINERS, params)
            cursor.execute(sql.LEASE_TO, params)
            jobs = _jobs_with_payments(cursor.fetchall())
    else:
        # SQLite serialises writers: a claim per pair is as good as one statement.
        with transaction.atomic(savepoint=False):
            jobs = [
                job
                for miner, job_id in assignments
                for job in _claim_portable(
                    miner_pk=miner.pk,
                    limit=1,
                    job_id=job_id,
                    models=None,
                    now=now,
                    lease_until=lease_until,
                    headstart=0,
                )
            ]
    for job in jobs:
        job.miner = miners[job.miner_id]
    _jobs_changed(jobs)
    return jobs


def job_claim_waiting(*, miner: Miner, limit: int = 1, wait_seconds: float = 0) -> list[Job]:
    """A long poll: claim now, or sleep until a job for one of the miner's models is announced.

    No busy loop: between claims the thread sleeps on a wake-up (see ``jobs.wakeup``). When the
    server stops, the poll returns what it has at once (see ``core.shutdown``).
    """
    jobs = job_claim(miner=miner, limit=limit)
    if jobs or wait_seconds <= 0:
        return jobs
    deadline = time.monotonic() + wait_seconds
    served = ServedModel.objects.filter(miner=miner.pk).values_list("name", flat=True)
    models, all_but = wakeup.miner_wait_scope(list(served))
    claim = partial(job_claim, miner=miner, limit=limit)
    return wakeup.wait_for_work(
        models, claim, all_but=all_but, deadline=deadline, look_again_after=matching.head_start_seconds(miner)
    )


class _KeptLeases:
    """Jobs this process leased to polling miners, kept until their results come back.

    A miner's keep-alive connection brings its result to the process that answered its poll:
    the completion then signs the job as claimed, with no read of it, as an in-cluster worker
    does with the jobs it hands back. Only a shortcut: the completing statement is fenced by the
    lease token, the miner and the payment the job was claimed with, so a job changed since
    (cancelled, re-leased, paid for) is left alone and read again. The oldest go first past
    ``max_entries``; a job is taken once."""

    def __init__(self, max_entries: int = 1024):
        self.max_entries = max_entries
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def keep(self, jobs: list[Job]) -> None:
        if connection.vendor != "postgresql":
            return  # the portable completion reads its jobs in its own transaction
        with self._lock:
            for job in jobs:
                self._jobs[str(job.pk)] = job
            while len(self._jobs) > self.max_entries:
                del self._jobs[next(iter(self._jobs))]

    def take(self, job_id, *, miner: Miner, lease_token: str | None) -> Job | None:
        """The job as ``miner`` leased it here, if the result names that lease (or none)."""
        key = str(job_id)
        with self._lock:
            job = self._jobs.get(key)
            if job is None or job.miner_id != miner.pk or (lease_token and lease_token != job.lease_token):
                return None
            del self._jobs[key]
        return job

    def clear(self) -> None:
        with self._lock:
            self._jobs.clear()


kept_leases = _KeptLeases()


def leases_keep(jobs: list[Job]) -> None:
    """Keep jobs just leased to a polling miner in this process, for their results (``_KeptLeases``)."""
    kept_leases.keep(jobs)


def job_claim_specific(*, miner: Miner, job_id) -> Job:
    """The tutorial protocol's ``POST /v1/jobs/{id}/claim``: lease exactly this job or fail."""
    claimed = job_claim(miner=miner, limit=1, job_id=job_id)
    if not claimed:
        if not Job.objects.filter(pk=job_id).exists():
            raise NotFound("Job not found.", code="JOB_NOT_FOUND")
        raise Conflict("Job is not available to this miner.", code="JOB_NOT_AVAILABLE")
    return claimed[0]


# --- Results ---------------------------------------------------------------------------


def _usage_from(result, metrics: dict) -> dict:
    reported = result.get("usage") if isinstance(result, dict) else None
    reported = reported if isinstance(reported, dict) else {}
    usage = {k: v for k, v in reported.items() if isinstance(k, str) and _is_count(v)}
    for key in ("prompt_tokens", "completion_tokens", "total_tokens", "units"):
        value = metrics.get(key)
        if _is_count(value):
            usage.setdefault(key, value)
    if "total_tokens" not in usage and {"prompt_tokens", "completion_tokens"} <= usage.keys():
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    duration = metrics.get("duration_ms", metrics.get("compute_ms"))
    if isinstance(duration, (int, float)) and not isinstance(duration, bool) and duration >= 0:
        usage["compute_ms"] = int(duration)
    if isinstance(metrics.get("unit_type"), str):
        usage["unit_type"] = metrics["unit_type"][:32]
    return usage


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True)
class Outcome:
    """A result a miner reports: ``result`` and ``metrics`` as sent. A caller holding the job as
    ``job_claim`` returned it passes it as ``job``: it is completed in place, and not read again."""

    job_id: object
    result: object
    metrics: dict = field(default_factory=dict)
    lease_token: str | None = None
    job: Job | None = None

    @property
    def reports_failure(self) -> bool:
        return isinstance(self.result, dict) and self.result.get("status") == "failed"


@dataclass(frozen=True)
class Completion:
    job: Job
    receipt: Receipt | None


def job_complete(
    *, job_id, miner: Miner, result, metrics: dict | None = None, lease_token: str | None = None
) -> Completion:
    """Store the lease holder's result and sign its receipt; ``result.status == "failed"`` fails the attempt.

    Anything but the current lease holder's attempt is a 409 that changes nothing.
    """
    outcome = Outcome(job_id=job_id, result=result, metrics=metrics or {}, lease_token=lease_token)
    if outcome.reports_failure:
        return _complete_with_failure(outcome, miner=miner)
    completed = jobs_complete(miner=miner, outcomes=[outcome])
    if not completed:
        _raise_lease_error(job_id=job_id, miner=miner, lease_token=lease_token)
    return completed[0]


def jobs_complete(*, miner: Miner, outcomes: list[Outcome]) -> list[Completion]:
    """Complete a batch of the miner's jobs in one transaction (in-cluster workers finish batches).

    Returns a completion for every outcome the miner held the lease for; the others change
    nothing. Outcomes reporting a failure fail their attempt instead (each on its own).
    """
    completions = []
    for outcome in outcomes:
        if outcome.reports_failure:
            with suppress(ServiceError):  # not this miner's lease: changes nothing
                completions.append(_complete_with_failure(outcome, miner=miner))
    successes = {str(o.job_id): o for o in outcomes if not o.reports_failure}
    if not successes:
        return completions
    now = timezone.now()
    if connection.vendor == "postgresql":
        done = _complete_postgres(miner=miner, outcomes=successes, now=now)
    else:
        done = _complete_portable(miner=miner, outcomes=successes, now=now)
    return completions + [Completion(job=job, receipt=receipt) for job, receipt in done]


def _completed(job: Job, outcome: Outcome, *, miner: Miner, now) -> Job:
    """``job`` as completed by ``outcome`` (not saved)."""
    job.status = JobStatus.COMPLETED
    job.result = _as_stored_json(outcome.result)
    job.usage = _usage_from(outcome.result, outcome.metrics)
    job.progress = 100
    job.completed_at = job.updated_at = now
    job.lease_expires_at = None
    job.error_code = job.error_message = ""
    job.miner = miner
    return job


def _as_stored_json(value):
    """``value`` as it reads back from a PostgreSQL ``jsonb`` column, so that a receipt's hash of a
    result is the hash of what is stored: floats written with a positive exponent come back as
    integers, and -0.0 as 0.0."""
    if isinstance(value, dict):
        return {k: _as_stored_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_stored_json(v) for v in value]
    if isinstance(value, float) and math.isfinite(value):
        text = repr(value)
        if "e+" in text:
            return int(Decimal(text))
        return value + 0.0  # -0.0 + 0.0 == 0.0
    return value


def _settle(charges: list[tuple[Job, Decimal]], *, miner: Miner) -> None:
    """Settle the escrows of completed jobs, each for its ``charge``. A completed job's payment is
    held in escrow for its price, which caps its charge: anything else is a broken invariant, and
    the transaction rolls back."""
    if not charges:
        return
    paid = escrows_settle(charges=charges, payee=miner.owner)
    unpaid = [job.pk for job, charge in charges if job.pk not in paid or paid[job.pk].amount_paid != charge]
    if unpaid:
        raise RuntimeError(f"escrow of jobs {unpaid} did not settle as charged")
    for job, _ in charges:
        job.payment = paid[job.pk]


def _charge(job: Job) -> Decimal:
    """The catalog price of the tokens the hold was for (generated ones; every token for
    embeddings), capped by what was held, or what was held when the job has no unit price."""
    usage = job.usage or {}
    tokens = usage.get("total_tokens") if job.type == JobType.EMBEDDING else usage.get("completion_tokens")
    if job.unit_price is None or not _is_count(tokens):
        return job.price
    return min(job.price, credits(job.unit_price * tokens / 1000))


def _charge_and_sign(held: list[Job], *, miner: Miner) -> tuple[list[tuple[Job, Decimal]], list[Receipt]]:
    """Charge the paid jobs of ``held`` (completed, not yet stored) and sign their receipts: what both
    backends do before storing the jobs with their receipts, then settling the charges."""
    # A job awaiting a verdict is paid, or refunded, once its answer is judged (``jobs.verification``,
    # ``job_verdict_settle``).
    charges = [(job, _charge(job)) for job in held if job.payment_id and not awaits_verdict(job)]
    # A receipt states what its client pays: the charge, or the job's price when it is free (or judged later).
    charged = {job.pk: charge for job, charge in charges}
    return charges, receipts_sign(completed=[(job, miner.miner_id, charged.get(job.pk, job.price)) for job in held])


def _complete_postgres(*, miner: Miner, outcomes: dict, now, read_again: bool = True) -> list[tuple[Job, Receipt]]:
    # Read the jobs, complete them here (a paid job with its charge), sign, then store them and
    # their receipts with one statement: for free jobs, two round trips and one transaction (the
    # statement's); a paid job's escrow settles in a transaction around the statement.
    given = {str(o.job.pk): o.job for o in outcomes.values() if o.job is not None}
    for job_id, outcome in outcomes.items():
        if job_id not in given and read_again:
            kept = kept_leases.take(job_id, miner=miner, lease_token=outcome.lease_token)
            if kept is not None:
                given[job_id] = kept
    unread = [job_id for job_id in outcomes if job_id not in given]
    held = []
    for job in [*given.values(), *(_leased(miner, unread) if unread else [])]:
        outcome = outcomes[str(job.pk)]
        if outcome.lease_token and outcome.lease_token != job.lease_token:
            continue  # a superseded attempt's result
        held.append(_completed(job, outcome, miner=miner, now=now))
    charges, receipts = _charge_and_sign(held, miner=miner)
    # The listeners hear of the jobs' ends in the settlement's transaction; a free job's completion
    # stays one statement in autocommit, and they hear of it right after.
    with transaction.atomic() if charges else nullcontext():
        stored = _store_completions(held, receipts, miner=miner, now=now)
        _settle([(job, charge) for job, charge in charges if job.pk in stored], miner=miner)
        done = [(job, receipt) for job, receipt in zip(held, receipts, strict=True) if job.pk in stored]
        _jobs_changed([job for job, _ in done])
    # A job paid for since it was read was left alone too: read once more, it settles.
    missed = {str(job.pk): replace(outcomes[str(job.pk)], job=None) for job in held if job.pk not in stored}
    if missed and read_again:
        done += _complete_postgres(miner=miner, outcomes=missed, now=now, read_again=False)
    return done


def _leased(miner: Miner, job_ids: list) -> list[Job]:
    """The jobs of ``job_ids`` the miner holds a lease on."""
    with connection.cursor() as cursor:
        cursor.execute(sql.LEASED, {"ids": job_ids, "miner": miner.pk})
        return rawsql.instances(Job, cursor.fetchall())


def _store_completions(held: list[Job], receipts: list[Receipt], *, miner: Miner, now) -> set:
    """Save completed jobs and their receipts where the lease and payment are still those the jobs
    were read with; the ids of those saved."""
    if not held:
        return set()
    rows = [
        {
            "id": str(job.pk),
            "fence": job.lease_token,
            "payment_id": job.payment_id,
            "result": job.result,
            "usage": job.usage,
            "receipt_id": receipt.receipt_id,
            "signed_json": receipt.signed_json,
            "opening": receipt.opening,
        }
        for job, receipt in zip(held, receipts, strict=True)
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql.COMPLETE, {"rows": sql.jsonb_param(rows), "miner": miner.pk, "now": now})
        return {row[0] for row in cursor.fetchall()}


def _complete_portable(*, miner: Miner, outcomes: dict, now) -> list[tuple[Job, Receipt]]:
    # As on PostgreSQL, in one transaction: complete, charge and sign, store the jobs and their
    # receipts, then settle. The listeners hear of the jobs' ends in it when it settled a payment,
    # right after it otherwise: what a listener of a free job's end fails at (a verified job's
    # decision) does not undo the completion.
    with transaction.atomic():
        held = []
        for job in Job.objects.filter(pk__in=list(outcomes), miner=miner, status=JobStatus.RUNNING):
            outcome = outcomes[str(job.pk)]
            if outcome.lease_token and outcome.lease_token != job.lease_token:
                continue
            held.append(_completed(job, outcome, miner=miner, now=now))
        charges, receipts = _charge_and_sign(held, miner=miner)
        for job in held:
            job.save(update_fields=[
                "status", "result", "usage", "progress", "completed_at", "lease_expires_at", "error_code",
                "error_message", "updated_at",
            ])  # fmt: skip
        receipts_store(receipts)
        _settle(charges, miner=miner)
        if charges:
            _jobs_changed(held)
    if not charges:
        _jobs_changed(held)
    return list(zip(held, receipts, strict=True))


def _complete_with_failure(outcome: Outcome, *, miner: Miner) -> Completion:
    result = outcome.result
    error = result.get("error")
    message = error if isinstance(error, str) else str(result.get("error_message") or "miner reported failure")
    job = job_fail(
        job_id=outcome.job_id, miner=miner, error_code=str(result.get("error_code") or "INFERENCE_FAILED"),
        error_message=message, lease_token=outcome.lease_token,
    )  # fmt: skip
    return Completion(job=job, receipt=None)


def _raise_lease_error(*, job_id, miner: Miner, lease_token: str | None):
    raise lease_refusal(job_id=job_id, miner=miner, lease_token=lease_token)


def lease_refusal(*, job_id, miner: Miner, lease_token: str | None) -> ServiceError:
    """Why a result of ``miner`` for ``job_id`` changed nothing: the job is gone, or the miner does not
    hold its current lease."""
    job = Job.objects.filter(pk=job_id).only("status", "miner", "lease_token").first()
    if job is None:
        return NotFound("Job not found.", code="JOB_NOT_FOUND")
    if job.status == JobStatus.RUNNING and job.miner_id == miner.pk and lease_token:
        return Conflict("This result belongs to a superseded attempt.", code="LEASE_NOT_HELD")
    return Conflict("This miner does not hold the job's lease.", code="LEASE_NOT_HELD")


def _lock_leased_job(*, job_id, miner: Miner, lease_token: str | None) -> Job:
    """The running job, locked, if ``miner`` holds its current lease; else a 409 that changes nothing."""
    job = Job.objects.select_for_update(of=("self",)).select_related("client").filter(pk=job_id).first()
    if job is None:
        raise NotFound("Job not found.", code="JOB_NOT_FOUND")
    if job.status != JobStatus.RUNNING or job.miner_id != miner.pk:
        raise Conflict("This miner does not hold the job's lease.", code="LEASE_NOT_HELD")
    if lease_token and lease_token != job.lease_token:
        raise Conflict("This result belongs to a superseded attempt.", code="LEASE_NOT_HELD")
    job.miner = miner
    return job


def job_fail(
    *, job_id, miner: Miner, error_code: str, error_message: str, lease_token: str | None = None, blame: bool = True
) -> Job:
    """The lease holder gives up its attempt: the job is re-queued, or fails once attempts run out.
    The attempt counts against the miner's reputation unless ``blame`` is False."""
    with transaction.atomic():
        job = _lock_leased_job(job_id=job_id, miner=miner, lease_token=lease_token)
        _fail_attempts([job], code=error_code or "INFERENCE_FAILED", message=error_message, blame=blame)
    return job


def _fail_attempts(jobs: list[Job], *, code: str, message: str, blame: bool) -> None:
    """End the current attempt of each of these locked running jobs, record it against the miner
    when ``blame``, and publish the jobs' new status after commit."""
    code = code[:64]
    if blame:
        FailedAttempt.objects.bulk_create(
            FailedAttempt(job=job, miner_id=job.miner_id, attempt=job.attempt, error_code=code, error_message=message)
            for job in jobs
        )
    for job in jobs:
        _fail_attempt(job, code=code, message=message)
    _jobs_changed(jobs)


def _fail_attempt(job: Job, *, code: str, message: str) -> None:
    now = timezone.now()
    job.error_code = code
    job.error_message = message
    job.lease_token = ""
    job.lease_expires_at = None
    if job.attempt < job.max_attempts and code not in NON_RETRYABLE_ERRORS:
        job.status = JobStatus.QUEUED
        job.miner = None
        job.progress = 0
        # An accepted job is not lost to a dead miner: it gets a full TTL in the queue again.
        job.expires_at = max(job.expires_at, now + timedelta(seconds=job.ttl_seconds))
        wakeup.announce(job)
        wakeup.queued(job.model)
    else:
        job.status = JobStatus.FAILED
        job.completed_at = now
        refund_escrow(job, reason=f"The job failed: {code}.")
    job.save(
        update_fields=[
            "status",
            "miner",
            "max_attempts",
            "progress",
            "expires_at",
            "completed_at",
            "lease_token",
            "lease_expires_at",
            "error_code",
            "error_message",
            "updated_at",
        ]
    )


def job_leases_extend(*, miner: Miner, job_ids: list | None = None) -> int:
    """A heartbeat: the leases the miner holds (of ``job_ids`` when given) run for another lease period."""
    until = timezone.now() + timedelta(seconds=settings.JOB_LEASE_SECONDS)
    leased = Job.objects.filter(miner=miner, status=JobStatus.RUNNING)
    if job_ids is not None:
        leased = leased.filter(pk__in=job_ids)
    return leased.update(lease_expires_at=until)


def job_requeue(*, job_id, reason: str = "re-queued by staff") -> Job:
    """Put a running job back in the queue now. Its attempt ends without counting against it."""
    with transaction.atomic():
        job = Job.objects.select_for_update(of=("self",)).filter(pk=job_id).first()
        if job is None:
            raise NotFound("Job not found.", code="JOB_NOT_FOUND")
        if job.status != JobStatus.RUNNING:
            raise Conflict(f"Only running jobs can be re-queued; this one is {job.status}.", code="JOB_NOT_RUNNING")
        if job.miner_id is None:
            raise Conflict("A verified job runs as its attempts: re-queue those.", code="JOB_NOT_RUNNING")
        job.max_attempts = max(job.max_attempts, job.attempt + 1)
        _fail_attempts([job], code="REQUEUED", message=reason, blame=False)
    return job


# --- Streaming -----------------------------------------------------------------------


@dataclass(frozen=True)
class StreamedText:
    """A piece of a job's output that a miner decoded: the ``index``-th of the attempt, with the
    number of tokens generated so far when the miner tells it."""

    job_id: str
    index: int
    text: str
    lease_token: str | None = None
    completion_tokens: int | None = None


def job_tokens_relay(*, miner: Miner, pieces: list[StreamedText]) -> set[str]:
    """Publish what a miner decoded to its jobs' subscribers (``ws/jobs/<id>/``, the OpenAI
    streams), as the in-cluster workers publish theirs; return the ids of the jobs refused.

    Fenced as results are: only pieces of jobs the miner runs are relayed, and a piece carrying a
    ``lease_token`` only for the attempt that token was issued to. Nothing is stored: the
    result the miner reports at the end is the job's output. Returns once the pieces are on the
    channel layer, so a miner's next batch, wherever it lands, is published after this one.
    """
    if not pieces:
        return set()
    running = Job.objects.filter(pk__in={piece.job_id for piece in pieces}, miner=miner, status=JobStatus.RUNNING)
    leases = {str(pk): (token, payload) for pk, token, payload in running.values_list("pk", "lease_token", "payload")}
    relayed, refused = [], set()
    for piece in pieces:
        lease, payload = leases.get(piece.job_id, (None, None))
        if lease is None or (piece.lease_token and piece.lease_token != lease):
            refused.add(piece.job_id)
            continue
        completion_tokens = piece.completion_tokens if piece.completion_tokens is not None else piece.index + 1
        max_tokens = payloads.requested_max_tokens(payload)
        relayed.append((piece.job_id, piece.index, piece.text, completion_tokens, max_tokens))
    if relayed:
        events.publish_token_events(relayed)
        events.flush()
    return refused


# --- Housekeeping ----------------------------------------------------------------------

SWEEP_BATCH = 500


def jobs_expire_queued(*, now: datetime | None = None) -> int:
    """Expire queued jobs whose TTL has passed."""
    now = now or timezone.now()
    expired = 0
    while True:
        with transaction.atomic():
            ids = list(
                Job.objects.select_for_update(skip_locked=True)
                .filter(status=JobStatus.QUEUED, expires_at__lte=now)
                .values_list("id", flat=True)[:SWEEP_BATCH]
            )
            if not ids:
                return expired
            expired += Job.objects.filter(pk__in=ids, status=JobStatus.QUEUED).update(
                status=JobStatus.EXPIRED,
                completed_at=now,
                error_code="JOB_EXPIRED",
                error_message="No miner took the job before its TTL ran out.",
                updated_at=now,
            )
            expired_jobs = list(Job.objects.select_related("miner").filter(pk__in=ids))
            for job in expired_jobs:
                refund_escrow(job, reason="The job expired in the queue.")
            _jobs_changed(expired_jobs)


def jobs_requeue_lapsed(*, now: datetime | None = None) -> int:
    """End the attempts whose lease ran out: re-queue them, or fail them when attempts are spent."""
    now = now or timezone.now()
    return _fail_running(
        Q(lease_expires_at__lte=now),
        code="LEASE_EXPIRED",
        message="The miner's lease expired before it reported.",
        blame=True,
    )


def jobs_release_for_miner(*, miner: Miner, reason: str, blame: bool) -> int:
    """End every attempt a miner holds (it went silent or deregistered, or staff took it offline);
    they count against its reputation when ``blame``."""
    return _fail_running(Q(miner=miner), code="MINER_OFFLINE", message=reason, blame=blame)


def _fail_running(condition: Q, *, code: str, message: str, blame: bool) -> int:
    released = 0
    while True:
        with transaction.atomic():
            jobs = list(
                Job.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("miner")
                .filter(condition, status=JobStatus.RUNNING)
                .order_by("lease_expires_at")[:SWEEP_BATCH]
            )
            _fail_attempts(jobs, code=code, message=message, blame=blame)
        released += len(jobs)
        if len(jobs) < SWEEP_BATCH:
            return released


# --- Miners and the jobs they hold -------------------------------------------------------


def miner_heartbeat(
    *, miner: Miner, inflight: int | None = None, metadata: dict | None = None, job_ids: list | None = None
) -> int:
    """Record a heartbeat and extend the leases the miner holds (only ``job_ids`` when given: a
    process sharing its miner with others vouches for its own jobs alone). Returns the number extended."""
    with transaction.atomic():
        miner_services.miner_record_heartbeat(miner=miner, inflight=inflight, metadata=metadata)
        return job_leases_extend(miner=miner, job_ids=job_ids)


@transaction.atomic
def miner_deregister(*, miner: Miner) -> int:
    """Take a miner out of the network; the jobs it holds go back to the queue."""
    miner_services.miner_mark_deregistered(miner=miner)
    transaction.on_commit(partial(feed.publish_miners_offline, [miner]))
    return jobs_release_for_miner(miner=miner, reason="The miner deregistered.", blame=True)


def miners_mark_silent_offline() -> int:
    """Miners silent past the heartbeat timeout go offline and their jobs return to the queue."""
    cutoff = timezone.now() - timedelta(seconds=settings.MINER_HEARTBEAT_TIMEOUT_SECONDS)
    taken_offline = 0
    for miner in miner_selectors.miners_silent_since(cutoff=cutoff):
        # One transaction: a heartbeat arriving meanwhile waits for it, then finds no leases to extend.
        with transaction.atomic():
            if miner_services.miner_mark_offline_if_silent(miner=miner, silent_since=cutoff):
                jobs_release_for_miner(miner=miner, reason="The miner stopped sending heartbeats.", blame=True)
                transaction.on_commit(partial(feed.publish_miners_offline, [miner]))
                taken_offline += 1
    return taken_offline


@transaction.atomic
def miner_take_offline(*, miner: Miner) -> int:
    """Staff take a miner offline: its jobs return to the queue. Returns how many."""
    miner_services.miner_mark_offline(miner=miner)
    transaction.on_commit(partial(feed.publish_miners_offline, [miner]))
    return jobs_release_for_miner(miner=miner, reason="The miner was taken offline by staff.", blame=False)


@transaction.atomic
def miner_put_in_maintenance(*, miner: Miner, reason: str) -> int:
    """Staff hold a miner offline for maintenance (heartbeats don't bring it back): its jobs return to
    the queue, not counted against it. Returns how many."""
    if miner_services.miner_mark_maintenance(miner=miner, reason=reason):
        transaction.on_commit(partial(feed.publish_miners_offline, [miner]))
    return jobs_release_for_miner(miner=miner, reason="The miner was taken offline for maintenance.", blame=False)


@transaction.atomic
def miner_ban_wide(*, kind: str, reason: str, actor, owner=None, network: str = "") -> tuple:
    """Ban an owner (every miner id it has or registers) or an address range: the ban refuses new
    registrations, and the registered miners it covers are banned now (``miner_ban``). Returns the
    ban, the miners banned now and how many jobs went back to the queue."""
    ban = miner_services.miner_ban_create(kind=kind, reason=reason, actor=actor, owner=owner, network=network)
    banned = [miner for miner in miner_services.miners_covered(ban=ban) if not miner.banned_at]
    released = sum(miner_ban(miner=miner, reason=reason, actor=actor) for miner in banned)
    return ban, banned, released


@transaction.atomic
def miner_ban(*, miner: Miner, reason: str, actor) -> int:
    """Staff ban a miner: it goes offline, its jobs return to the queue, and it may not register,
    heartbeat or claim until unbanned. Returns how many jobs went back to the queue."""
    if miner_services.miner_mark_banned(miner=miner, reason=reason, actor=actor):
        transaction.on_commit(partial(feed.publish_miners_offline, [miner]))
    return jobs_release_for_miner(miner=miner, reason="The miner was banned by staff.", blame=False)
