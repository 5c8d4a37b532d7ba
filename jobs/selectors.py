from datetime import datetime, timedelta

from django.db.models import (
    Avg,
    Case,
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Coalesce
from django.utils import timezone

from jobs.models import Job, JobStatus
from miners.models import Miner, MinerStatus, ServedModel

RECENT_RUNS_WINDOW = timedelta(minutes=15)
DEFAULT_RUN_SECONDS = 10.0


def claimable_jobs(*, miner: Miner, now: datetime) -> QuerySet[Job]:
    """Queued, unexpired jobs whose model and constraints this miner satisfies — all in SQL."""
    jobs = Job.objects.filter(
        status=JobStatus.QUEUED,
        expires_at__gt=now,
        model__in=ServedModel.objects.filter(miner=miner.pk).values("name"),
    )
    jobs = jobs.filter(Q(req_min_vram_gb__isnull=True) | Q(req_min_vram_gb__lte=miner.vram_gb))
    jobs = jobs.filter(Q(req_cuda_code__isnull=True) | Q(req_cuda_code__lte=miner.cuda_code or 0))
    jobs = jobs.filter(Q(req_region="") | Q(req_region__iexact=miner.region))
    if miner.price is not None:
        jobs = jobs.filter(Q(req_max_price__isnull=True) | Q(req_max_price__gte=miner.price))
    if miner.gpu_name:
        jobs = jobs.alias(miner_gpu=Value(miner.gpu_name)).filter(Q(req_gpu="") | Q(miner_gpu__icontains=F("req_gpu")))
    else:
        jobs = jobs.filter(req_gpu="")
    return jobs


def miners_able_to_run(*, job: Job) -> QuerySet[Miner]:
    """Online miners that serve the job's model and meet its constraints."""
    miners = Miner.objects.filter(status=MinerStatus.ONLINE, draining=False, served_models__name=job.model)
    if job.req_min_vram_gb is not None:
        miners = miners.filter(vram_gb__gte=job.req_min_vram_gb)
    if job.req_cuda_code is not None:
        miners = miners.filter(cuda_code__gte=job.req_cuda_code)
    if job.req_region:
        miners = miners.filter(region__iexact=job.req_region)
    if job.req_max_price is not None:
        miners = miners.filter(Q(price__isnull=True) | Q(price__lte=job.req_max_price))
    if job.req_gpu:
        miners = miners.filter(gpu_name__icontains=job.req_gpu)
    return miners


def jobs_visible_to(*, user, is_admin: bool = False) -> QuerySet[Job]:
    jobs = Job.objects.select_related("miner")
    return jobs if is_admin else jobs.filter(client=user)


def average_run_seconds(*, model: str) -> float:
    since = timezone.now() - RECENT_RUNS_WINDOW
    duration = ExpressionWrapper(F("completed_at") - F("started_at"), output_field=DurationField())
    average = Job.objects.filter(status=JobStatus.COMPLETED, model=model, completed_at__gte=since).aggregate(
        avg=Avg(duration)
    )["avg"]
    return average.total_seconds() if average else DEFAULT_RUN_SECONDS


def queue_depth_by_model() -> list[dict]:
    return list(
        Job.objects.filter(status=JobStatus.QUEUED)
        .values("model", "priority")
        .annotate(depth=Count("id"))
        .order_by("model", "priority")
    )


def with_queue_position(jobs: QuerySet[Job]) -> QuerySet[Job]:
    """Annotate ``queue_position`` (None unless queued) in the same query."""
    ahead = (
        Job.objects.filter(status=JobStatus.QUEUED, model=OuterRef("model"), rank_at__lt=OuterRef("rank_at"))
        .order_by()
        .values("model")
        .annotate(n=Count("*"))
        .values("n")
    )
    return jobs.annotate(
        queue_position=Case(
            When(status=JobStatus.QUEUED, then=Coalesce(Subquery(ahead, output_field=IntegerField()), 0) + 1),
            default=None,
            output_field=IntegerField(),
        )
    )


def queue_outlook(*, jobs: list[Job]) -> dict:
    """For each queued job (annotated with ``queue_position``): whether an online miner can run
    it now and a wait estimate. Jobs with the same model and constraints share their look-ups."""
    outlook, by_signature = {}, {}
    for job in jobs:
        if job.status != JobStatus.QUEUED:
            continue
        signature = (job.model, job.req_gpu, job.req_min_vram_gb, job.req_cuda_code, job.req_region, job.req_max_price)
        if signature not in by_signature:
            slots = sum(miners_able_to_run(job=job).values_list("max_concurrent_jobs", flat=True))
            by_signature[signature] = (slots, average_run_seconds(model=job.model) if slots else None)
        slots, run_seconds = by_signature[signature]
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
