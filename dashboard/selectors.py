"""Reads the pages need beyond the other apps' selectors: each list in a fixed number of queries."""

from datetime import timedelta
from decimal import Decimal

from django.db.models import Count, DecimalField, IntegerField, OuterRef, Prefetch, Q, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from jobs.models import Job, JobStatus, Receipt
from jobs.selectors import earnings_subquery, units_of_job, with_reputation
from miners.models import Miner, MinerStatus, ServedModel
from payments.models import ExchangePayment

THROUGHPUT_WINDOW = timedelta(hours=1)


def jobs_of_client(*, user) -> QuerySet[Job]:
    """The user's jobs, newest first, with what the list shows (the miner, the payment)."""
    return Job.objects.filter(client=user).select_related("miner", "payment").order_by("-created_at", "-id")


def job_of_client(*, user, job_id) -> Job | None:
    return jobs_of_client(user=user).filter(pk=job_id).first()


def latest_receipt_of_job(*, job: Job) -> Receipt | None:
    return (
        Receipt.objects.filter(job=job).prefetch_related("attestations").order_by("-created_at", "-receipt_id").first()
    )


def exchange_payments_of(*, user) -> QuerySet[ExchangePayment]:
    return ExchangePayment.objects.filter(user=user).order_by("-created_at", "-id")


def online_miners_with_work(*, now=None) -> QuerySet[Miner]:
    """Online miners with their models and, in subqueries of the same statement, what
    ``miner_work_summary`` reports for one miner: jobs completed and running, units served,
    earnings; plus units served in the last hour (throughput) and the miner's reputation."""
    since = (now or timezone.now()) - THROUGHPUT_WINDOW
    completed = Job.objects.filter(miner=OuterRef("pk"), status=JobStatus.COMPLETED).order_by().values("miner")
    running = Job.objects.filter(miner=OuterRef("pk"), status=JobStatus.RUNNING).order_by().values("miner")
    money = DecimalField(max_digits=24, decimal_places=8)
    return (
        with_reputation(Miner.objects.filter(status=MinerStatus.ONLINE), now=now)
        .select_related("owner")
        .prefetch_related(Prefetch("served_models", queryset=ServedModel.objects.order_by("name")))
        .annotate(
            jobs_completed=Coalesce(Subquery(completed.annotate(n=Count("id")).values("n"), IntegerField()), 0),
            jobs_running=Coalesce(Subquery(running.annotate(n=Count("id")).values("n"), IntegerField()), 0),
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


def job_counts_of_client(*, user) -> dict[str, int]:
    counts = Job.objects.filter(client=user).aggregate(
        total=Count("id"),
        active=Count("id", filter=Q(status__in=JobStatus.ACTIVE)),
        completed=Count("id", filter=Q(status=JobStatus.COMPLETED)),
    )
    return counts
