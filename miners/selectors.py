from datetime import datetime

from django.db import connection
from django.db.models import Count, Exists, OuterRef, Q, QuerySet

from accounts.services import KEY_COLUMN_COUNT, KEY_COLUMNS, KEY_TABLES, keys_from_rows
from core import rawsql
from core.errors import NotFound
from miners.capabilities import AGENT_TASK_MODEL
from miners.models import Miner, MinerStatus, ServedModel

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


def agent_seat() -> Exists:
    """Whether a miner is an agent's seat in the job machinery (it serves ``AGENT_TASK_MODEL``, which
    no other miner may): a filter on ``Miner`` rows."""
    return Exists(ServedModel.objects.filter(miner=OuterRef("pk"), name=AGENT_TASK_MODEL))


def gpu_miners(miners: QuerySet[Miner] | None = None) -> QuerySet[Miner]:
    """``miners`` (every one by default) less agents' seats: the miners people mean by miners, whose
    lists and counts these are."""
    return (Miner.objects.all() if miners is None else miners).filter(~agent_seat())


def miners_silent_since(*, cutoff: datetime) -> QuerySet[Miner]:
    """Online miners that have sent nothing since ``cutoff``."""
    return Miner.objects.filter(status=MinerStatus.ONLINE, last_heartbeat_at__lt=cutoff)


def miner_counts() -> dict[str, int]:
    """GPU miners (``gpu_miners``) by status."""
    counts = dict(gpu_miners().values_list("status").annotate(n=Count("id")).order_by())
    return {status.value: counts.get(status.value, 0) for status in MinerStatus}


def model_served(name: str) -> bool:
    """Whether a registered miner (online or not) serves the model ``name``."""
    return ServedModel.objects.filter(name=name).exclude(miner__status=MinerStatus.DEREGISTERED).exists()


def model_served_online(name: str) -> bool:
    """Whether an online miner that is not draining serves the model ``name``."""
    return ServedModel.objects.filter(name=name, miner__status=MinerStatus.ONLINE, miner__draining=False).exists()


def miner_states() -> dict[str, int]:
    """GPU miners by what staff see: online (taking work), draining, offline, banned, in maintenance."""
    return gpu_miners().aggregate(
        online=Count("id", filter=Q(status=MinerStatus.ONLINE, draining=False)),
        draining=Count("id", filter=Q(status=MinerStatus.ONLINE, draining=True)),
        offline=Count(
            "id", filter=Q(status=MinerStatus.OFFLINE, banned_at__isnull=True, maintenance_since__isnull=True)
        ),
        banned=Count("id", filter=Q(banned_at__isnull=False)),
        maintenance=Count("id", filter=Q(maintenance_since__isnull=False, banned_at__isnull=True)),
    )
