from django.db import connection
from django.db.models import Count, Q, QuerySet

from aitbc_site import rawsql
from aitbc_site.errors import NotFound
from jobs.models import Job, JobStatus
from miners.models import Miner, MinerStatus

_MINER_BY_NAME = f"SELECT {rawsql.columns(Miner, 'm')} FROM miners_miner m WHERE m.miner_id = %s AND m.status <> %s"


def miner_for_owner(*, owner, miner_id: str, any_owner: bool = False) -> Miner:
    """The caller's registered miner named ``miner_id`` (any owner's for admin keys)."""
    if not 0 < len(miner_id) <= 128 or "\x00" in miner_id:
        raise NotFound(f"Miner {miner_id[:128]!r} is not registered.", code="MINER_NOT_FOUND")
    # Runs on every miner request: one prepared statement rather than an ORM query.
    with connection.cursor() as cursor:
        cursor.execute(_MINER_BY_NAME, [miner_id, MinerStatus.DEREGISTERED])
        miner = next(iter(rawsql.instances(Miner, cursor.fetchall())), None)
    if miner is None or not (any_owner or miner.owner_id == owner.pk):
        raise NotFound(f"Miner {miner_id!r} is not registered.", code="MINER_NOT_FOUND")
    return miner


def jobs_of_miner(*, miner: Miner) -> QuerySet[Job]:
    return Job.objects.filter(miner=miner).select_related("miner").order_by("-started_at", "-id")


def miner_work_summary(*, miner: Miner) -> dict:
    """What a miner has done: jobs completed and units (tokens) served."""
    totals = Job.objects.filter(miner=miner).aggregate(
        completed=Count("id", filter=Q(status=JobStatus.COMPLETED)),
        running=Count("id", filter=Q(status=JobStatus.RUNNING)),
    )
    units = sum(
        int(usage.get("units", usage.get("total_tokens", 0)) or 0)
        for usage in Job.objects.filter(miner=miner, status=JobStatus.COMPLETED).values_list("usage", flat=True)
    )
    return {"jobs_completed": totals["completed"], "jobs_running": totals["running"], "units_served": units}


def miner_counts() -> dict[str, int]:
    counts = dict(Miner.objects.values_list("status").annotate(n=Count("id")).order_by())
    return {status.value: counts.get(status.value, 0) for status in MinerStatus}
