"""Every change to a job: submit, cancel, claim, complete, fail, expire and requeue.

Each function is one transaction. A running job belongs to the miner holding its lease:
only that miner's current attempt (fenced by ``lease_token``) may complete or fail it, so a
job is completed at most once however many attempts ran.
"""

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, IntegerField, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from aitbc_site.errors import Conflict, NotFound
from explorer import signing
from explorer.models import Receipt
from explorer.services import receipt_issue
from jobs import wakeup
from jobs.models import Job, JobPriority, JobStatus, JobType
from jobs.selectors import claimable_jobs
from miners.capabilities import cuda_code
from miners.models import Miner, ServedModel

logger = logging.getLogger(__name__)

# Failures that another attempt cannot fix: the job fails at once.
NON_RETRYABLE_ERRORS = frozenset({"INPUT_TOO_LONG", "INVALID_PAYLOAD", "INVALID_PARAMS", "UNSUPPORTED_MODEL"})


@dataclass(frozen=True)
class Submission:
    job: Job
    created: bool


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
) -> Submission:
    """Queue a job. With an ``idempotency_key`` a repeated request returns the first job."""
    constraints = constraints or {}
    ttl_seconds = ttl_seconds or settings.JOB_DEFAULT_TTL_SECONDS
    fingerprint = _fingerprint(
        type=job_type, model=model, payload=payload, constraints=constraints, priority=priority, ttl=ttl_seconds
    )
    if idempotency_key:
        existing = Job.objects.filter(client=client, idempotency_key=idempotency_key).first()
        if existing is not None:
            return _replayed(existing, fingerprint)

    now = timezone.now()
    job = Job(
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
        idempotency_key=idempotency_key or None,
        request_fingerprint=fingerprint,
        created_at=now,
    )
    try:
        with transaction.atomic():
            job.save(force_insert=True)
            wakeup.announce(job.model)
    except IntegrityError:
        if not idempotency_key:
            raise
        return _replayed(Job.objects.get(client=client, idempotency_key=idempotency_key), fingerprint)
    return Submission(job=job, created=True)


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
    job.status = JobStatus.CANCELLED
    job.completed_at = timezone.now()
    job.lease_expires_at = None
    job.save(update_fields=["status", "completed_at", "lease_expires_at", "updated_at"])
    return job


# --- Claims ----------------------------------------------------------------------------


def _new_token_sql() -> str:
    if connection.vendor == "postgresql":
        return "gen_random_uuid()::text"
    return "lower(hex(randomblob(16)))"


def job_claim(*, miner: Miner, limit: int = 1, job_id=None) -> list[Job]:
    """Lease up to ``limit`` of the best queued jobs this miner can run (or the job ``job_id``).

    The miner's row is locked so that its concurrency limit holds against parallel polls;
    the jobs are taken in one ``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED)``,
    so concurrent miners never wait for, or double-claim, each other's jobs.
    """
    now = timezone.now()
    with transaction.atomic():
        locked = _lock_miner_with_load(miner)
        if locked is None or not locked.accepts_work:
            return []
        free = locked.max_concurrent_jobs - locked.running
        limit = min(limit, free, settings.MINER_MAX_CLAIM_BATCH)
        if limit <= 0:
            return []
        candidates = claimable_jobs(miner=locked, now=now).order_by("rank_at")
        if job_id is not None:
            candidates = candidates.filter(pk=job_id)
        candidates = candidates.values("id")[:limit]
        if connection.features.has_select_for_update_skip_locked:
            candidates = candidates.select_for_update(skip_locked=True)
        sub_sql, sub_params = candidates.query.sql_with_params()

        adapt = connection.ops.adapt_datetimefield_value
        table = Job._meta.db_table
        sql = (
            f"UPDATE {table} SET status = %s, miner_id = %s, attempt = attempt + 1, "
            f"lease_token = {_new_token_sql()}, lease_expires_at = %s, "
            "started_at = %s, progress = 0, updated_at = %s "
            f"WHERE id IN ({sub_sql}) RETURNING *"
        )
        lease_until = now + timedelta(seconds=settings.JOB_LEASE_SECONDS)
        params = [JobStatus.RUNNING, locked.pk, adapt(lease_until), adapt(now), adapt(now), *sub_params]
        jobs = list(Job.objects.raw(sql, params))
    jobs.sort(key=lambda j: j.rank_at)
    return jobs


def _lock_miner_with_load(miner: Miner) -> Miner | None:
    """The miner's row, locked, annotated with its number of running jobs."""
    running = (
        Job.objects.filter(miner=OuterRef("pk"), status=JobStatus.RUNNING)
        .order_by()
        .values("miner")
        .annotate(n=Count("*"))
        .values("n")
    )
    return (
        Miner.objects.select_for_update(of=("self",))
        .annotate(running=Coalesce(Subquery(running, output_field=IntegerField()), 0))
        .filter(pk=miner.pk)
        .first()
    )


def job_claim_waiting(*, miner: Miner, limit: int = 1, wait_seconds: float = 0) -> list[Job]:
    """A long poll: claim now, or sleep until a job for one of the miner's models is announced.

    No busy loop: between claims the thread sleeps on a wake-up (see ``jobs.wakeup``).
    """
    deadline = time.monotonic() + wait_seconds
    models = ServedModel.objects.filter(miner=miner.pk).values_list("name", flat=True)
    # Registered before the first claim, so a job committed in between still wakes us.
    with wakeup.hub.waiter(list(models)) as waiter:
        jobs = job_claim(miner=miner, limit=limit)
        while not jobs:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if not connection.in_atomic_block:
                connection.close()  # hand the connection back to the pool while asleep
            waiter.wait(remaining)
            jobs = job_claim(miner=miner, limit=limit)
    return jobs


def job_claim_specific(*, miner: Miner, job_id) -> Job:
    """The tutorial protocol's ``POST /v1/jobs/{id}/claim``: lease exactly this job or fail."""
    claimed = job_claim(miner=miner, limit=1, job_id=job_id)
    if not claimed:
        if not Job.objects.filter(pk=job_id).exists():
            raise NotFound("Job not found.", code="JOB_NOT_FOUND")
        raise Conflict("Job is not available to this miner.", code="JOB_NOT_AVAILABLE")
    return claimed[0]


# --- Results ---------------------------------------------------------------------------


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


def _usage_from(result, metrics: dict) -> dict:
    reported = dict(result.get("usage") or {}) if isinstance(result, dict) else {}
    usage = {k: v for k, v in reported.items() if isinstance(v, int) and not isinstance(v, bool)}
    for key in ("prompt_tokens", "completion_tokens", "total_tokens", "units"):
        value = metrics.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            usage.setdefault(key, value)
    if "total_tokens" not in usage and {"prompt_tokens", "completion_tokens"} <= usage.keys():
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    duration = metrics.get("duration_ms", metrics.get("compute_ms"))
    if isinstance(duration, (int, float)) and not isinstance(duration, bool) and duration >= 0:
        usage["compute_ms"] = int(duration)
    if isinstance(metrics.get("unit_type"), str):
        usage["unit_type"] = metrics["unit_type"][:32]
    return usage


@dataclass(frozen=True)
class Completion:
    job: Job
    receipt: Receipt | None


def job_complete(
    *, job_id, miner: Miner, result, metrics: dict | None = None, lease_token: str | None = None
) -> Completion:
    """Store the lease holder's result and sign its receipt; ``result.status == "failed"`` fails the attempt."""
    metrics = metrics or {}
    with transaction.atomic():
        job = _lock_leased_job(job_id=job_id, miner=miner, lease_token=lease_token)
        if isinstance(result, dict) and result.get("status") == "failed":
            error = result.get("error")
            message = error if isinstance(error, str) else str(result.get("error_message") or "miner reported failure")
            _fail_attempt(job, code=str(result.get("error_code") or "INFERENCE_FAILED"), message=message)
            return Completion(job=job, receipt=None)
        job.status = JobStatus.COMPLETED
        job.result = result
        job.usage = _usage_from(result, metrics)
        job.progress = 100
        job.completed_at = timezone.now()
        job.lease_expires_at = None
        job.error_code = job.error_message = ""
        job.save(
            update_fields=[
                "status",
                "result",
                "usage",
                "progress",
                "completed_at",
                "lease_expires_at",
                "error_code",
                "error_message",
                "updated_at",
            ]
        )
        receipt = receipt_issue(job=job)
    return Completion(job=job, receipt=receipt)


def job_fail(*, job_id, miner: Miner, error_code: str, error_message: str, lease_token: str | None = None) -> Job:
    """The lease holder gives up its attempt: the job is re-queued, or fails once attempts run out."""
    with transaction.atomic():
        job = _lock_leased_job(job_id=job_id, miner=miner, lease_token=lease_token)
        _fail_attempt(job, code=error_code or "INFERENCE_FAILED", message=error_message)
    return job


def _fail_attempt(job: Job, *, code: str, message: str) -> None:
    """End the current attempt of a locked running job."""
    now = timezone.now()
    job.error_code = code[:64]
    job.error_message = message
    job.lease_token = ""
    job.lease_expires_at = None
    if job.attempt < job.max_attempts and code not in NON_RETRYABLE_ERRORS:
        job.status = JobStatus.QUEUED
        job.miner = None
        job.progress = 0
        # An accepted job is not lost to a dead miner: it gets a full TTL in the queue again.
        job.expires_at = max(job.expires_at, now + timedelta(seconds=job.ttl_seconds))
        wakeup.announce(job.model)
    else:
        job.status = JobStatus.FAILED
        job.completed_at = now
    job.save(
        update_fields=[
            "status",
            "miner",
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


def job_leases_extend(*, miner: Miner) -> int:
    """A heartbeat: every lease the miner holds runs for another lease period."""
    until = timezone.now() + timedelta(seconds=settings.JOB_LEASE_SECONDS)
    return Job.objects.filter(miner=miner, status=JobStatus.RUNNING).update(lease_expires_at=until)


def job_requeue(*, job_id, reason: str = "re-queued by staff") -> Job:
    """Put a running job back in the queue now (its attempt ends), as if its lease had lapsed."""
    with transaction.atomic():
        job = Job.objects.select_for_update(of=("self",)).filter(pk=job_id).first()
        if job is None:
            raise NotFound("Job not found.", code="JOB_NOT_FOUND")
        if job.status != JobStatus.RUNNING:
            raise Conflict(f"Only running jobs can be re-queued; this one is {job.status}.", code="JOB_NOT_RUNNING")
        _fail_attempt(job, code="REQUEUED", message=reason)
    return job


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


def jobs_requeue_lapsed(*, now: datetime | None = None) -> int:
    """End the attempts whose lease ran out: re-queue them, or fail them when attempts are spent."""
    now = now or timezone.now()
    return _fail_running(
        Q(lease_expires_at__lte=now), code="LEASE_EXPIRED", message="The miner's lease expired before it reported."
    )


def jobs_release_for_miner(*, miner: Miner, reason: str) -> int:
    """End every attempt a miner holds (it went offline, was drained hard or deregistered)."""
    return _fail_running(Q(miner=miner), code="MINER_OFFLINE", message=reason)


def _fail_running(condition: Q, *, code: str, message: str) -> int:
    released = 0
    while True:
        with transaction.atomic():
            jobs = list(
                Job.objects.select_for_update(skip_locked=True)
                .filter(condition, status=JobStatus.RUNNING)
                .order_by("lease_expires_at")[:SWEEP_BATCH]
            )
            for job in jobs:
                _fail_attempt(job, code=code, message=message)
        released += len(jobs)
        if len(jobs) < SWEEP_BATCH:
            return released
