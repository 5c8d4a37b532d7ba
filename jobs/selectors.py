import operator
import time
from datetime import datetime, timedelta
from decimal import Decimal
from functools import reduce

from django.conf import settings
from django.db import connection
from django.db.models import (
    Avg,
    Case,
    Count,
    DecimalField,
    DurationField,
    ExpressionWrapper,
    F,
    FloatField,
    IntegerField,
    Min,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.expressions import RawSQL
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce, Greatest, NullIf, TruncMinute
from django.utils import timezone

from jobs import matching, sql
from jobs.models import FailedAttempt, Job, JobPriority, JobStatus, Receipt, Verdict, VerdictKind
from miners.models import Miner, MinerStatus, ServedModel
from miners.selectors import gpu_miners
from payments.models import LedgerEntry, Payment, TransactionKind

RECENT_RUNS_WINDOW = timedelta(minutes=15)
RECENT_RUNS = 200
DEFAULT_RUN_SECONDS = 10.0
QUEUE_POSITION_CAP = 1000
THROUGHPUT_WINDOW = timedelta(hours=1)


def claimable_jobs(*, miner: Miner, now: datetime) -> QuerySet[Job]:
    """Queued, unexpired jobs whose model and constraints this miner satisfies — all in SQL."""
    return matching.jobs_for_miner(Job.objects.filter(status=JobStatus.QUEUED, expires_at__gt=now), miner=miner)


def miners_able_to_run(*, job: Job) -> QuerySet[Miner]:
    """Online miners that serve the job's model and meet its constraints."""
    return matching.miners_for_job(Miner.objects.all(), job=job)


def jobs_visible_to(*, user, is_admin: bool = False) -> QuerySet[Job]:
    jobs = Job.objects.select_related("miner", "payment")
    return jobs if is_admin else jobs.filter(client=user)


def average_run_seconds(*, model: str) -> float:
    """Mean run time of the model's last ``RECENT_RUNS`` jobs completed in the last 15 minutes."""
    since = timezone.now() - RECENT_RUNS_WINDOW
    recent = Job.objects.filter(status=JobStatus.COMPLETED, model=model, completed_at__gte=since)
    recent_ids = recent.order_by("-completed_at").values("id")[:RECENT_RUNS]
    duration = ExpressionWrapper(F("completed_at") - F("started_at"), output_field=DurationField())
    average = Job.objects.filter(pk__in=Subquery(recent_ids)).aggregate(avg=Avg(duration))["avg"]
    return average.total_seconds() if average else DEFAULT_RUN_SECONDS


def queue_depth_by_model() -> list[dict]:
    return list(
        Job.objects.filter(status=JobStatus.QUEUED)
        .values("model", "priority")
        .annotate(depth=Count("id"))
        .order_by("model", "priority")
    )


def with_queue_position(jobs: QuerySet[Job]) -> QuerySet[Job]:
    """Annotate ``queue_position`` (None unless queued) in the same query, counting at most
    ``QUEUE_POSITION_CAP`` jobs ahead so that reads stay fast however long the queue is."""
    table = Job._meta.db_table
    ahead = RawSQL(
        f"SELECT count(*) FROM (SELECT 1 FROM {table} q WHERE q.status = %s AND q.model = {table}.model"
        f" AND q.rank_at < {table}.rank_at LIMIT %s) ahead",
        (JobStatus.QUEUED, QUEUE_POSITION_CAP),
        output_field=IntegerField(),
    )
    return jobs.annotate(
        queue_position=Case(When(status=JobStatus.QUEUED, then=ahead + 1), default=None, output_field=IntegerField())
    )


def queue_position(*, job: Job) -> int:
    """1 for the next job of its model to be claimed (capped like ``with_queue_position``)."""
    with connection.cursor() as cursor:
        rank_at = connection.ops.adapt_datetimefield_value(job.rank_at)
        cursor.execute(sql.QUEUE_AHEAD, [job.model, rank_at, QUEUE_POSITION_CAP])
        return cursor.fetchone()[0] + 1


_capacity_cache: dict[tuple, tuple[float, int, float | None]] = {}


def _capacity(job: Job, *, seen: dict) -> tuple[int, float | None]:
    """Slots of online miners able to run ``job`` and the model's recent run time. Shared by jobs
    alike in one call (``seen``) and cached briefly across calls: every submission asks, and the
    answer only changes as miners come and go."""
    signature = (job.model, job.req_gpu, job.req_min_vram_gb, job.req_cuda_code, job.req_region, job.req_max_price)
    cached = seen.get(signature) or _capacity_cache.get(signature)
    if cached and (signature in seen or cached[0] > time.monotonic()):
        return cached[1], cached[2]
    slots = sum(miners_able_to_run(job=job).values_list("max_concurrent_jobs", flat=True))
    run_seconds = average_run_seconds(model=job.model) if slots else None
    if len(_capacity_cache) > 10_000:
        _capacity_cache.clear()
    seen[signature] = _capacity_cache[signature] = (
        time.monotonic() + settings.JOB_OUTLOOK_CACHE_SECONDS,
        slots,
        run_seconds,
    )
    return slots, run_seconds


def queue_outlook(*, jobs: list[Job]) -> dict:
    """For each queued job (with ``queue_position``): whether an online miner can run it now
    and a wait estimate."""
    outlook, seen = {}, {}
    for job in jobs:
        if job.status != JobStatus.QUEUED:
            continue
        slots, run_seconds = _capacity(job, seen=seen)
        position = getattr(job, "queue_position", None) or 1
        outlook[job.pk] = {
            "is_possible": slots > 0,
            "estimated_wait_seconds": round(position / slots * run_seconds, 1) if slots else None,
        }
    return outlook


def active_job_counts() -> dict[str, int]:
    counts = dict(
        Job.objects.filter(status__in=JobStatus.ACTIVE).values_list("status").annotate(n=Count("id")).order_by()
    )
    return {status: counts.get(status, 0) for status in JobStatus.ACTIVE}


def models_with_queued_jobs(models) -> set[str]:
    """Those of ``models`` that have a job waiting (one index probe each)."""
    return {model for model in models if Job.objects.filter(status=JobStatus.QUEUED, model=model).exists()}


def leases_held(*, miner: Miner, leases: dict[str, str]) -> set[str]:
    """The job ids of ``leases`` (job id → lease token) that ``miner`` still runs under that token:
    the others were cancelled, re-queued or leased again meanwhile."""
    running = Job.objects.filter(pk__in=list(leases), miner=miner, status=JobStatus.RUNNING)
    return {str(pk) for pk, token in running.values_list("pk", "lease_token") if token == leases[str(pk)]}


# --- What miners have done ----------------------------------------------------------------

# A miner's reputation: of the attempts it ended in this window, the share that completed.
REPUTATION_WINDOW = timedelta(days=7)


def jobs_of_miner(*, miner: Miner) -> QuerySet[Job]:
    return Job.objects.filter(miner=miner).select_related("miner", "payment").order_by("-started_at", "-id")


def units_of_job():
    """The work one job counts for: the units its miner reported, else its total tokens."""
    return Coalesce(Cast(KT("usage__units"), IntegerField()), Cast(KT("usage__total_tokens"), IntegerField()), Value(0))


def miner_work_summary(*, miner: Miner) -> dict:
    """What a miner has done: jobs completed and units (tokens) served, counted in SQL."""
    units = units_of_job()
    totals = Job.objects.filter(miner=miner).aggregate(
        completed=Count("id", filter=Q(status=JobStatus.COMPLETED)),
        running=Count("id", filter=Q(status=JobStatus.RUNNING)),
        units=Sum(units, filter=Q(status=JobStatus.COMPLETED), default=0),
    )
    reputation = miner_reputation(miner=miner)
    return {
        "jobs_completed": totals["completed"],
        "jobs_running": totals["running"],
        "units_served": totals["units"],
        "earned": miner_earnings(miner=miner),
        "reputation": reputation,
    }


def with_reputation(miners: QuerySet[Miner], *, now=None) -> QuerySet[Miner]:
    """``miners`` annotated, over the last ``REPUTATION_WINDOW``, with ``recent_completed`` (jobs
    it completed), ``recent_failed`` (attempts it failed, let lapse or abandoned: see
    ``jobs.models.FailedAttempt``), ``recent_wrong`` (completed answers found wrong: outvoted, or a
    failed canary; see ``jobs.models.Verdict``) and ``reputation``, the share of the attempts it
    ended that completed with an answer not found wrong (0 to 1; ``None`` for a miner that ended
    no attempt in the window). Subqueries of the same statement."""
    since = (now or timezone.now()) - REPUTATION_WINDOW
    mine = OuterRef("pk")
    return miners.annotate(
        recent_completed=_count(Job.objects.filter(miner=mine, status=JobStatus.COMPLETED, completed_at__gte=since)),
        recent_failed=_count(FailedAttempt.objects.filter(miner=mine, created_at__gte=since)),
        recent_wrong=_count(Verdict.objects.filter(miner=mine, kind__in=VerdictKind.WRONG, created_at__gte=since)),
    ).annotate(
        reputation=Cast(Greatest(F("recent_completed") - F("recent_wrong"), 0), FloatField())
        / NullIf(F("recent_completed") + F("recent_failed"), 0, output_field=FloatField())
    )


def miner_reputation(*, miner: Miner) -> float | None:
    return with_reputation(Miner.objects.filter(pk=miner.pk)).values_list("reputation", flat=True).first()


def with_wrong_answers_counting(miners: QuerySet[Miner], *, now=None) -> QuerySet[Miner]:
    """``with_reputation``, plus ``wrong_counting``: the wrong answers that count towards a
    suspension (in the reputation window, after staff last lifted one)."""
    since = (now or timezone.now()) - REPUTATION_WINDOW
    after = Greatest(Value(since), Coalesce(OuterRef("suspension_lifted_at"), Value(since)))
    counting = Verdict.objects.filter(miner=OuterRef("pk"), kind__in=VerdictKind.WRONG, created_at__gt=after)
    return with_reputation(miners, now=now).annotate(wrong_counting=_count(counting))


def failed_attempts_by_code(*, miner: Miner, now=None) -> list[tuple[str, int]]:
    """The miner's failed attempts in the reputation window, counted by error code, most first."""
    return _counted_in_window(FailedAttempt.objects.filter(miner=miner), "error_code", now=now)


def verdicts_by_kind(*, miner: Miner, now=None) -> list[tuple[str, int]]:
    """The verdicts on the miner's answers in the reputation window, counted by kind, most first."""
    return _counted_in_window(Verdict.objects.filter(miner=miner), "kind", now=now)


def _counted_in_window(rows: QuerySet, field: str, *, now) -> list[tuple[str, int]]:
    since = (now or timezone.now()) - REPUTATION_WINDOW
    counts = rows.filter(created_at__gte=since).values_list(field).annotate(n=Count("id")).order_by("-n", field)
    return list(counts)


def _count(rows: QuerySet) -> Coalesce:
    """How many of ``rows`` (filtered on ``miner=OuterRef("pk")``) each outer miner row has; counted
    as ``*`` so that an index holding the filter's columns answers alone."""
    counted = rows.order_by().values("miner").annotate(n=Count("*")).values("n")
    return Coalesce(Subquery(counted, IntegerField()), 0)


def with_work_figures(miners: QuerySet[Miner], *, now=None) -> QuerySet[Miner]:
    """``with_reputation``, plus ``running`` and ``completed`` (the miner's jobs in those states). Each
    figure is a subquery of the outer miner row over an index of its own (``job_miner_status_idx``,
    failed attempts by miner), so a page of miners costs the same however many jobs they ran; none
    joins the jobs into the outer query. Earnings are read for a page's miners at once
    (``earnings_by_miner``)."""
    jobs = Job.objects.filter(miner=OuterRef("pk"))
    return with_reputation(miners, now=now).annotate(
        running=_count(jobs.filter(status=JobStatus.RUNNING)),
        completed=_count(jobs.filter(status=JobStatus.COMPLETED)),
    )


def earnings_by_miner(miners) -> dict[int, Decimal]:
    """What ``miner_earnings`` counts, for each of ``miners`` (by primary key), in one query; 0 for none."""
    ids = [miner.pk for miner in miners]
    credits = (
        LedgerEntry.objects.filter(
            transaction__kind=TransactionKind.SETTLE,
            transaction__job__miner__in=ids,
            wallet__user=F("transaction__job__miner__owner"),
        )
        .values_list("transaction__job__miner")
        .annotate(total=Sum("amount"))
        .order_by()
    )
    return {pk: Decimal(0) for pk in ids} | dict(credits)


def _settlement_credits(*, miner, owner) -> QuerySet[LedgerEntry]:
    """The ledger entries crediting ``owner`` for the settled jobs of ``miner`` (values or ``OuterRef``)."""
    return LedgerEntry.objects.filter(
        transaction__kind=TransactionKind.SETTLE, transaction__job__miner=miner, wallet__user=owner
    )


def earnings_subquery() -> Subquery:
    """For each miner row of the outer query: what ``miner_earnings`` counts (``NULL`` for none)."""
    credits = (
        _settlement_credits(miner=OuterRef("pk"), owner=OuterRef("owner_id"))
        .order_by()
        .values("transaction__job__miner")
        .annotate(total=Sum("amount"))
        .values("total")
    )
    return Subquery(credits, output_field=DecimalField(max_digits=24, decimal_places=8))


def miner_earnings(*, miner: Miner) -> Decimal:
    """AITBC paid to the miner's owner for the jobs this miner completed (settlements' credits)."""
    return _settlement_credits(miner=miner, owner=miner.owner_id).aggregate(total=Sum("amount", default=Decimal(0)))[
        "total"
    ]


# --- Receipts ----------------------------------------------------------------------------


def receipts_for_job(*, job_id, with_attempts: bool = False) -> QuerySet[Receipt]:
    """The job's receipts, newest first; ``with_attempts``: with those of its attempts when it is a
    verified job (its own, signed once they agreed, comes first)."""
    mine = Q(job_id=job_id) | Q(job__parent_id=job_id) if with_attempts else Q(job_id=job_id)
    return Receipt.objects.filter(mine).order_by("-created_at", "-receipt_id")


def attempts_of(*, job: Job) -> list[Job]:
    """A verified job's attempts, the first answered first, each with its miner and the verdict on
    its answer (``verdict_kind``: agreed, outvoted, or None)."""
    attempts = Job.objects.filter(parent=job).select_related("miner", "payment").order_by("completed_at", "created_at")
    return list(attempts.annotate(verdict_kind=F("verdict__kind")))


def latest_receipts(*, job_ids) -> dict:
    """Each of the jobs' latest receipt, by job id, in one query."""
    latest = {}
    for receipt in Receipt.objects.filter(job__in=list(job_ids)).order_by("created_at", "receipt_id"):
        latest[receipt.job_id] = receipt
    return latest


def receipt_documents(receipts) -> list[dict]:
    return [receipt.served_document() for receipt in receipts]


def receipt_of_client(*, receipt_id: str, user, is_admin: bool = False) -> Receipt | None:
    """The receipt, for its job's client (or an admin): what its opening is given to."""
    receipts = Receipt.objects.filter(pk=receipt_id)
    return (receipts if is_admin else receipts.filter(job__client=user)).first()


def receipt_visible_to(*, receipt_id: str, user, is_admin: bool = False) -> Receipt | None:
    """The receipt, for its job's client, the owner of the miner that did the job, or an admin."""
    receipts = Receipt.objects.filter(pk=receipt_id).prefetch_related("attestations")
    if not is_admin:
        receipts = receipts.filter(Q(job__client=user) | Q(job__miner__owner=user))
    return receipts.first()


def receipts_of_client(*, user, is_admin: bool = False) -> QuerySet[Receipt]:
    """A client's receipts, newest first (every client's for an admin)."""
    receipts = Receipt.objects.all() if is_admin else Receipt.objects.filter(job__client=user)
    return receipts.prefetch_related("attestations").order_by("-created_at", "-receipt_id")


# --- What the pages show ------------------------------------------------------------------


def with_attempt_escrows(jobs) -> list[Job]:
    """``jobs`` as a list, the verified ones among them given their attempts' escrows
    (``Job.attempt_escrows``, which their payment status and charge are read from) with one query
    for all, not one each."""
    jobs = list(jobs)
    verified = {job.pk: job for job in jobs if job.verification and not job.parent_id}
    if verified:
        escrows = {pk: [] for pk in verified}
        for payment in Payment.objects.filter(job__parent__in=list(verified)).annotate(parent_pk=F("job__parent")):
            escrows[payment.parent_pk].append(payment)
        for pk, job in verified.items():
            job.__dict__["attempt_escrows"] = escrows[pk]
    return jobs


def jobs_of_client(*, user) -> QuerySet[Job]:
    """The user's jobs, newest first, with what the list shows (the miner, the payment)."""
    return Job.objects.filter(client=user).select_related("miner", "payment").order_by("-created_at", "-id")


def job_of_client(*, user, job_id) -> Job | None:
    return jobs_of_client(user=user).filter(pk=job_id).first()


def job_counts_of_client(*, user) -> dict[str, int]:
    return Job.objects.filter(client=user).aggregate(
        total=Count("id"),
        active=Count("id", filter=Q(status__in=JobStatus.ACTIVE)),
        completed=Count("id", filter=Q(status=JobStatus.COMPLETED)),
    )


def online_miners_with_work(*, now=None) -> QuerySet[Miner]:
    """Online GPU miners (agents' seats left out) with their models and, in subqueries of the same statement, what
    ``miner_work_summary`` reports for one miner: jobs completed and running, units served,
    earnings; plus units served in the last hour (throughput) and the miner's reputation."""
    since = (now or timezone.now()) - THROUGHPUT_WINDOW
    completed = Job.objects.filter(miner=OuterRef("pk"), status=JobStatus.COMPLETED).order_by().values("miner")
    running = Job.objects.filter(miner=OuterRef("pk"), status=JobStatus.RUNNING).order_by().values("miner")
    money = DecimalField(max_digits=24, decimal_places=8)
    return (
        with_reputation(gpu_miners(Miner.objects.filter(status=MinerStatus.ONLINE)), now=now)
        .select_related("owner")
        .prefetch_related(Prefetch("served_models", queryset=ServedModel.objects.order_by("name")))
        .annotate(
            jobs_completed=_count(completed),
            jobs_running=_count(running),
            units_served=Coalesce(Subquery(completed.annotate(n=Sum(units_of_job())).values("n"), IntegerField()), 0),
            units_last_hour=Coalesce(
                Subquery(
                    completed.filter(completed_at__gte=since).annotate(n=Sum(units_of_job())).values("n"),
                    IntegerField(),
                ),
                0,
            ),
            earned=Coalesce(earnings_subquery(), Value(Decimal(0)), output_field=money),
        )
        .order_by("miner_id")
    )


def latest_receipt_of_job(*, job: Job) -> Receipt | None:
    """The job's newest receipt, with its attestations."""
    return receipts_for_job(job_id=job.pk).prefetch_related("attestations").first()


# --- The staff console's health panel -----------------------------------------------------

HEALTH_WINDOW = timedelta(hours=1)
# A running job is stuck once it has run this many times its model's recent average, and at least
# STUCK_AFTER_AT_LEAST.
STUCK_FACTOR = 10
STUCK_AFTER_AT_LEAST = timedelta(minutes=5)


def stuck_cutoffs(*, models, now) -> dict[str, datetime]:
    """For each model, the start time before which a running job of it is stuck: ``STUCK_FACTOR``
    times its mean run time over ``RECENT_RUNS_WINDOW`` (``DEFAULT_RUN_SECONDS`` without one), and
    at least ``STUCK_AFTER_AT_LEAST``. One grouped query."""
    duration = ExpressionWrapper(F("completed_at") - F("started_at"), output_field=DurationField())
    recent = dict(
        Job.objects.filter(
            status=JobStatus.COMPLETED, model__in=list(models), completed_at__gte=now - RECENT_RUNS_WINDOW
        )
        .values_list("model")
        .annotate(mean=Avg(duration))
        .order_by()
    )
    cutoffs = {}
    for model in models:
        mean = recent.get(model)
        run_seconds = mean.total_seconds() if mean else DEFAULT_RUN_SECONDS
        cutoffs[model] = now - max(STUCK_AFTER_AT_LEAST, timedelta(seconds=STUCK_FACTOR * run_seconds))
    return cutoffs


def health_figures(*, now=None) -> dict:
    """What the admin home's health panel shows, each figure read over an index:

    - ``failures`` (failed attempts) and ``expiries`` (jobs expired in the queue) in the last hour,
      and ``worst_miners``: the miners with most failed attempts in it, with their failure rate;
    - ``stuck_running``: per model, jobs running past ``stuck_cutoffs`` (with the cut-off time);
    - ``unserved``: per model, queued jobs no online, undrained miner serves;
    - ``queue``: per model and priority, the depth and the oldest job's submission time.
    """
    now = now or timezone.now()
    since = now - HEALTH_WINDOW
    failures = FailedAttempt.objects.filter(created_at__gte=since)
    worst = list(
        failures.values("miner_id", "miner__miner_id").annotate(failed=Count("id")).order_by("-failed", "miner_id")[:5]
    )
    completed = dict(
        Job.objects.filter(
            miner_id__in=[row["miner_id"] for row in worst], status=JobStatus.COMPLETED, completed_at__gte=since
        )
        .values_list("miner_id")
        .annotate(n=Count("id"))
        .order_by()
    )
    for row in worst:
        row["completed"] = completed.get(row["miner_id"], 0)
        row["failure_rate"] = row["failed"] / (row["failed"] + row["completed"])
    running = Job.objects.filter(status=JobStatus.RUNNING)
    cutoffs = stuck_cutoffs(models=running.values_list("model", flat=True).distinct().order_by(), now=now)
    stuck_counts = dict(
        running.filter(reduce(operator.or_, (Q(model=m, started_at__lt=c) for m, c in cutoffs.items()), Q(pk=None)))
        .values_list("model")
        .annotate(n=Count("id"))
        .order_by()
    )
    stuck = [
        {"model": model, "jobs": stuck_counts[model], "started_before": cutoffs[model]}
        for model in sorted(stuck_counts)
    ]
    served = ServedModel.objects.filter(miner__status=MinerStatus.ONLINE, miner__draining=False).values("name")
    unserved = list(
        Job.objects.filter(status=JobStatus.QUEUED)
        .exclude(model__in=Subquery(served))
        .values("model")
        .annotate(jobs=Count("id"))
        .order_by("model")
    )
    queue = list(
        Job.objects.filter(status=JobStatus.QUEUED)
        .values("model", "priority")
        .annotate(depth=Count("id"), oldest=Min("created_at"))
        .order_by("model", "-priority")
    )
    for row in queue:
        row["priority_label"] = JobPriority(row["priority"]).label
    return {
        "since": since,
        "failures": failures.count(),
        "expiries": Job.objects.filter(status=JobStatus.EXPIRED, completed_at__gte=since).count(),
        "worst_miners": worst,
        "stuck_running": stuck,
        "unserved": unserved,
        "queue": queue,
    }


def outcomes_over_time(*, since: datetime, step: timedelta, now=None, miner: Miner | None = None) -> list[dict]:
    """Completed jobs and failed attempts from ``since`` to now in buckets of ``step`` (oldest first):
    ``[{"start", "completed", "failed"}]``. Counted per minute in SQL, bucketed here."""
    now = now or timezone.now()
    completed = Job.objects.filter(status=JobStatus.COMPLETED, completed_at__gte=since)
    failed = FailedAttempt.objects.filter(created_at__gte=since)
    if miner is not None:
        completed, failed = completed.filter(miner=miner), failed.filter(miner=miner)
    count = int((now - since) / step) + 1
    buckets = [{"start": since + n * step, "completed": 0, "failed": 0} for n in range(count)]
    for name, rows, field in (("completed", completed, "completed_at"), ("failed", failed, "created_at")):
        per_minute = rows.annotate(minute=TruncMinute(field)).values_list("minute").annotate(n=Count("id")).order_by()
        for minute, n in per_minute:
            index = min(count - 1, max(0, int((minute - since) / step)))
            buckets[index][name] += n
    return buckets
