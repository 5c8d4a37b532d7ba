from datetime import timedelta
from decimal import Decimal

from django.db import connection
from django.db.models import (
    Count,
    DecimalField,
    F,
    FloatField,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
)
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce, NullIf
from django.utils import timezone

from accounts.services import KEY_COLUMN_COUNT, KEY_COLUMNS, KEY_TABLES, keys_from_rows
from core import rawsql
from core.errors import NotFound
from jobs.models import FailedAttempt, Job, JobStatus
from miners.models import Miner, MinerStatus
from payments.models import LedgerEntry, TransactionKind

# A miner's reputation: of the attempts it ended in this window, the share that completed.
REPUTATION_WINDOW = timedelta(days=7)

_MINER_BY_NAME = f"SELECT {rawsql.columns(Miner, 'm')} FROM miners_miner m WHERE m.miner_id = %s AND m.status <> %s"
_KEYS_AND_MINER = (
    f"SELECT {KEY_COLUMNS}, {rawsql.columns(Miner, 'm')} FROM {KEY_TABLES} "
    "LEFT JOIN miners_miner m ON m.miner_id = %s AND m.status <> %s WHERE k.prefix = %s"
)
# What ``miner_for_owner`` is told when the caller has not looked the miner up already.
NOT_LOOKED_UP = object()


def is_miner_name(miner_id: str) -> bool:
    return 0 < len(miner_id) <= 128 and "\x00" not in miner_id


def keys_and_miner(*, key_prefix: str, miner_id: str) -> tuple[list, Miner | None]:
    """The API keys with ``key_prefix`` (as ``accounts.services.api_key_authenticate`` takes them)
    and the registered miner named ``miner_id``, in one statement: a miner's requests name their
    miner (``X-Miner-ID``) next to their key."""
    with connection.cursor() as cursor:
        cursor.execute(_KEYS_AND_MINER, [miner_id, MinerStatus.DEREGISTERED, key_prefix])
        rows = cursor.fetchall()
    miners = [row for row in rows if row[KEY_COLUMN_COUNT] is not None]
    miner = rawsql.instances(Miner, miners[:1], start=KEY_COLUMN_COUNT)[0] if miners else None
    return keys_from_rows(rows), miner


def miner_for_owner(*, owner, miner_id: str, any_owner: bool = False, looked_up=NOT_LOOKED_UP) -> Miner:
    """The caller's registered miner named ``miner_id`` (any owner's for admin keys).

    ``looked_up`` is that miner (or None) when the caller has read it already (``keys_and_miner``).
    """
    if not is_miner_name(miner_id):
        raise NotFound(f"Miner {miner_id[:128]!r} is not registered.", code="MINER_NOT_FOUND")
    if looked_up is NOT_LOOKED_UP:
        # Runs on every miner request: one prepared statement rather than an ORM query.
        with connection.cursor() as cursor:
            cursor.execute(_MINER_BY_NAME, [miner_id, MinerStatus.DEREGISTERED])
            miner = next(iter(rawsql.instances(Miner, cursor.fetchall())), None)
    else:
        miner = looked_up
    if miner is None or not (any_owner or miner.owner_id == owner.pk):
        raise NotFound(f"Miner {miner_id!r} is not registered.", code="MINER_NOT_FOUND")
    return miner


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
    reputation = with_reputation(Miner.objects.filter(pk=miner.pk)).values_list("reputation", flat=True).first()
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
    ``jobs.models.FailedAttempt``) and ``reputation``, the completed share of both (0 to 1;
    ``None`` for a miner that ended no attempt in the window). Subqueries of the same statement."""
    since = (now or timezone.now()) - REPUTATION_WINDOW
    completed = (
        Job.objects.filter(miner=OuterRef("pk"), status=JobStatus.COMPLETED, completed_at__gte=since)
        .order_by()
        .values("miner")
        .annotate(n=Count("id"))
        .values("n")
    )
    failed = (
        FailedAttempt.objects.filter(miner=OuterRef("pk"), created_at__gte=since)
        .order_by()
        .values("miner")
        .annotate(n=Count("id"))
        .values("n")
    )
    return miners.annotate(
        recent_completed=Coalesce(Subquery(completed, IntegerField()), 0),
        recent_failed=Coalesce(Subquery(failed, IntegerField()), 0),
    ).annotate(
        reputation=Cast(F("recent_completed"), FloatField())
        / NullIf(F("recent_completed") + F("recent_failed"), 0, output_field=FloatField())
    )


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


def miner_counts() -> dict[str, int]:
    counts = dict(Miner.objects.values_list("status").annotate(n=Count("id")).order_by())
    return {status.value: counts.get(status.value, 0) for status in MinerStatus}
