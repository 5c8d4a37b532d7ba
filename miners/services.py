"""Miner registry: registration, heartbeats, capability changes, draining, going offline and bans.

These change the miners' own rows. What also ends the jobs a miner holds (deregistering, going
offline, a ban) or extends its leases (a heartbeat) is composed in ``jobs.services``."""

import hashlib
import ipaddress
import logging
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.services import credentials_changed
from core.errors import Conflict, Invalid, NotFound, ServiceError
from miners.capabilities import Capabilities, cuda_code
from miners.models import Miner, MinerBan, MinerBanKind, MinerStatus, ServedModel

logger = logging.getLogger(__name__)

# Polling counts as a sign of life, recorded at most this often.
LIVENESS_RESOLUTION = timedelta(seconds=10)

# Called as ``listener(miner, models=...)`` once a registration commits. Higher apps, which this
# one may not import, add theirs from their ``AppConfig.ready()`` (the network feed announces it).
_registration_listeners: list[Callable[..., None]] = []


def when_registered(listener: Callable[..., None]) -> None:
    """Have ``listener(miner, models=...)`` called after each registration commits."""
    if listener not in _registration_listeners:
        _registration_listeners.append(listener)


def _apply_capabilities(miner: Miner, capabilities: Capabilities) -> None:
    miner.capabilities = capabilities.raw
    miner.gpu_name = capabilities.gpu_name
    miner.vram_gb = capabilities.vram_gb
    miner.cuda_version = capabilities.cuda_version
    miner.cuda_code = cuda_code(capabilities.cuda_version)
    miner.region = capabilities.region
    miner.price = capabilities.price
    miner.max_concurrent_jobs = capabilities.max_concurrent_jobs


def _replace_served_models(miner: Miner, models: tuple[str, ...]) -> None:
    wanted = set(models)
    ServedModel.objects.filter(miner=miner).exclude(name__in=wanted).delete()
    existing = set(ServedModel.objects.filter(miner=miner).values_list("name", flat=True))
    ServedModel.objects.bulk_create([ServedModel(miner=miner, name=name) for name in sorted(wanted - existing)])


def miner_register(
    *,
    owner,
    miner_id: str,
    capabilities: Capabilities,
    public_key: str = "",
    in_cluster: bool = False,
    address: str | None = None,
) -> tuple[Miner, str]:
    """Register a miner, or update it when it registers again. Returns it and a new session token.
    Refused (403) while the miner, its owner or its ``address`` is banned, or the miner is in maintenance."""
    session_token = secrets.token_urlsafe(32)
    now = timezone.now()
    try:
        with transaction.atomic():
            ban = _wide_ban_covering(owner=owner, address=address)
            if ban is not None:
                raise ServiceError(f"This miner is banned: {ban.reason}.", code="MINER_BANNED", status_code=403)
            miner = Miner.objects.select_for_update().filter(miner_id=miner_id).first()
            if miner is None:
                miner = Miner(miner_id=miner_id, owner=owner)
            elif miner.owner_id != owner.pk:
                raise Conflict("This miner_id belongs to another account.", code="MINER_ID_TAKEN")
            else:
                miner_refusal_check(miner=miner)
            if address:
                miner.last_address = address
            _apply_capabilities(miner, capabilities)
            if public_key:
                miner.public_key = public_key
            miner.in_cluster = in_cluster
            miner.status = MinerStatus.ONLINE
            miner.last_heartbeat_at = now
            miner.session_token_hash = hashlib.sha256(session_token.encode()).hexdigest()
            miner.save()
            _replace_served_models(miner, capabilities.models)
    except IntegrityError:  # registered concurrently under the same id
        raise Conflict("This miner_id was registered concurrently; retry.", code="MINER_ID_TAKEN") from None
    for listener in _registration_listeners:
        transaction.on_commit(partial(listener, miner, models=capabilities.models))
    return miner, session_token


def miner_update_capabilities(*, miner: Miner, capabilities: Capabilities) -> Miner:
    with transaction.atomic():
        _apply_capabilities(miner, capabilities)
        miner.save()
        _replace_served_models(miner, capabilities.models)
    return miner


def miner_record_heartbeat(*, miner: Miner, inflight: int | None = None, metadata: dict | None = None) -> None:
    """Record that the miner is alive (and what it reports). A banned or deregistered miner is refused."""
    fields = {"last_heartbeat_at": timezone.now(), "status": MinerStatus.ONLINE}
    if inflight is not None:
        fields["inflight_reported"] = max(0, inflight)
    if metadata is not None:
        fields["metadata"] = metadata
    updated = (
        Miner.objects.filter(pk=miner.pk, banned_at__isnull=True, maintenance_since__isnull=True)
        .exclude(status=MinerStatus.DEREGISTERED)
        .update(**fields, updated_at=timezone.now())
    )
    if not updated:
        current = Miner.objects.filter(pk=miner.pk).first()
        if current is not None:
            miner_refusal_check(miner=current)
        raise NotFound("This miner was deregistered.", code="MINER_NOT_FOUND")


def miner_touch(*, miner: Miner) -> None:
    """A poll or claim is a sign of life too (miners on the tutorial protocol never heartbeat)."""
    now = timezone.now()
    if (
        miner.status == MinerStatus.ONLINE
        and miner.last_heartbeat_at
        and now - miner.last_heartbeat_at < LIVENESS_RESOLUTION
    ):
        return
    # A banned miner, or one in maintenance, stays offline, so a claim that follows (which checks the
    # status) gets nothing.
    touched = (
        Miner.objects.filter(pk=miner.pk, banned_at__isnull=True, maintenance_since__isnull=True)
        .exclude(status=MinerStatus.DEREGISTERED)
        .update(last_heartbeat_at=now, status=MinerStatus.ONLINE)
    )
    if touched:
        miner.last_heartbeat_at, miner.status = now, MinerStatus.ONLINE


def miner_set_draining(*, miner: Miner, draining: bool) -> Miner:
    Miner.objects.filter(pk=miner.pk).update(draining=draining, updated_at=timezone.now())
    credentials_changed()
    miner.draining = draining
    return miner


def miner_mark_deregistered(*, miner: Miner) -> None:
    Miner.objects.filter(pk=miner.pk).update(status=MinerStatus.DEREGISTERED, updated_at=timezone.now())
    credentials_changed()
    miner.status = MinerStatus.DEREGISTERED


def miner_mark_offline(*, miner: Miner) -> None:
    Miner.objects.filter(pk=miner.pk).update(status=MinerStatus.OFFLINE, updated_at=timezone.now())
    credentials_changed()
    miner.status = MinerStatus.OFFLINE


def miner_mark_offline_if_silent(*, miner: Miner, silent_since: datetime) -> bool:
    """Take the miner offline if it is online and has sent nothing since ``silent_since``; whether it did.
    A heartbeat arriving meanwhile waits for the caller's transaction, then finds the miner offline."""
    updated = Miner.objects.filter(pk=miner.pk, status=MinerStatus.ONLINE, last_heartbeat_at__lt=silent_since).update(
        status=MinerStatus.OFFLINE, updated_at=timezone.now()
    )
    if updated:
        miner.status = MinerStatus.OFFLINE
    return bool(updated)


def _banned(miner: Miner) -> ServiceError:
    return ServiceError(
        f"This miner is banned: {miner.banned_reason or 'no reason given'}.", code="MINER_BANNED", status_code=403
    )


def miner_refusal_check(*, miner: Miner) -> None:
    """Raise the 403 a banned miner, or one staff hold in maintenance, gets for anything it asks."""
    if miner.banned_at:
        raise _banned(miner)
    if miner.maintenance_since:
        raise ServiceError(
            f"This miner is offline for maintenance: {miner.maintenance_reason or 'no reason given'}.",
            code="MINER_MAINTENANCE",
            status_code=403,
        )


def parse_network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise Invalid(f"{value!r} is not an address or an address range.", code="VALIDATION_ERROR") from None


def _wide_ban_covering(*, owner, address: str | None) -> MinerBan | None:
    """The owner's ban, or one of an address range holding ``address``, in force now."""
    bans = MinerBan.objects.filter(lifted_at__isnull=True)
    ban = bans.filter(kind=MinerBanKind.OWNER, owner=owner).first()
    if ban is not None or not address:
        return ban
    where = ipaddress.ip_address(address)
    for ban in bans.filter(kind=MinerBanKind.NETWORK):
        network = ipaddress.ip_network(ban.network)
        if where.version == network.version and where in network:
            return ban
    return None


def miners_covered(*, ban: MinerBan) -> list[Miner]:
    """The registered miners a wide ban covers: the owner's, or those last registered from the range."""
    if ban.kind == MinerBanKind.OWNER:
        return list(Miner.objects.filter(owner=ban.owner).order_by("miner_id"))
    network = ipaddress.ip_network(ban.network)
    candidates = Miner.objects.filter(last_address__isnull=False).order_by("miner_id")
    return [
        miner
        for miner in candidates
        if (where := ipaddress.ip_address(miner.last_address)).version == network.version and where in network
    ]


def miner_ban_create(*, kind: str, reason: str, actor, owner=None, network: str = "") -> MinerBan:
    """Record a ban of every miner of ``owner``, or of those registering from ``network``; registrations
    it covers are refused from now on. The miners it covers already are the caller's to ban
    (``jobs.services.miner_ban_wide`` bans them and re-queues their jobs)."""
    if kind == MinerBanKind.NETWORK:
        network, owner = str(parse_network(network)), None
    elif owner is None:
        raise Invalid("An owner ban names its owner.", code="VALIDATION_ERROR")
    else:
        network = ""
    return MinerBan.objects.create(kind=kind, owner=owner, network=network, reason=reason[:300], banned_by=actor)


def miner_ban_lift(*, ban: MinerBan, actor) -> MinerBan:
    """End a wide ban: its owner or range may register again (miners banned by it stay banned until approved)."""
    MinerBan.objects.filter(pk=ban.pk, lifted_at__isnull=True).update(lifted_at=timezone.now(), lifted_by=actor)
    ban.refresh_from_db()
    return ban


@transaction.atomic
def miner_mark_maintenance(*, miner: Miner, reason: str) -> bool:
    """Hold the miner offline for maintenance until ``miner_end_maintenance``: its heartbeats, polls and
    registrations are refused meanwhile. Returns whether it was online (its jobs are the caller's to release)."""
    locked = Miner.objects.select_for_update().get(pk=miner.pk)
    was_online = locked.status == MinerStatus.ONLINE
    if was_online:
        locked.status = MinerStatus.OFFLINE
    locked.maintenance_since, locked.maintenance_reason = timezone.now(), reason[:300]
    locked.save(update_fields=["status", "maintenance_since", "maintenance_reason", "updated_at"])
    miner.status, miner.maintenance_since, miner.maintenance_reason = (
        locked.status,
        locked.maintenance_since,
        locked.maintenance_reason,
    )
    return was_online


def miner_end_maintenance(*, miner: Miner) -> Miner:
    """The miner may come back: it goes online when it next registers, heartbeats or polls."""
    Miner.objects.filter(pk=miner.pk).update(maintenance_since=None, maintenance_reason="", updated_at=timezone.now())
    credentials_changed()
    miner.maintenance_since, miner.maintenance_reason = None, ""
    return miner


@transaction.atomic
def miner_mark_banned(*, miner: Miner, reason: str, actor) -> bool:
    """Ban a miner: it goes offline and may not register, heartbeat or claim until unbanned.
    Returns whether it was online (its jobs are the caller's to release)."""
    locked = Miner.objects.select_for_update().get(pk=miner.pk)
    was_online = locked.status == MinerStatus.ONLINE
    if was_online:
        locked.status = MinerStatus.OFFLINE
    locked.banned_at, locked.banned_reason, locked.banned_by = timezone.now(), reason[:300], actor
    locked.save(update_fields=["status", "banned_at", "banned_reason", "banned_by", "updated_at"])
    miner.status, miner.banned_at, miner.banned_reason, miner.banned_by = (
        locked.status,
        locked.banned_at,
        locked.banned_reason,
        actor,
    )
    logger.info("miner %s banned by %s: %s", miner.miner_id, actor, reason)
    return was_online


def miner_unban(*, miner: Miner, actor) -> Miner:
    """Staff approve a banned miner again: it comes back online when it next registers, heartbeats or polls."""
    Miner.objects.filter(pk=miner.pk).update(
        banned_at=None, banned_reason="", banned_by=None, updated_at=timezone.now()
    )
    credentials_changed()
    miner.banned_at, miner.banned_reason, miner.banned_by = None, "", None
    logger.info("miner %s unbanned by %s", miner.miner_id, actor)
    return miner


def miner_suspend(*, miner: Miner, reason: str) -> bool:
    """Suspend a miner for wrong answers: it stays registered and online but claims nothing until
    staff lift the suspension. Returns whether it was not suspended already."""
    now = timezone.now()
    suspended = Miner.objects.filter(pk=miner.pk, suspended_at__isnull=True).update(
        suspended_at=now, suspended_reason=reason[:300], updated_at=now
    )
    if suspended:
        miner.suspended_at, miner.suspended_reason = now, reason[:300]
        logger.warning("miner %s suspended: %s", miner.miner_id, reason)
    return bool(suspended)


def miner_lift_suspension(*, miner: Miner, actor) -> Miner:
    """Staff lift a suspension: the miner may claim again, and the wrong answers it gave before
    no longer count towards the next one."""
    now = timezone.now()
    Miner.objects.filter(pk=miner.pk).update(
        suspended_at=None, suspended_reason="", suspension_lifted_at=now, updated_at=now
    )
    miner.suspended_at, miner.suspended_reason, miner.suspension_lifted_at = None, "", now
    logger.info("suspension of miner %s lifted by %s", miner.miner_id, actor)
    return miner


def miner_set_reputation(*, miner: Miner, reputation: float | None) -> None:
    """Store the reputation matching reads for ``miner`` (as read with it), when it changed."""
    if miner.reputation_score != reputation:
        Miner.objects.filter(pk=miner.pk).update(reputation_score=reputation)
        miner.reputation_score = reputation


def miners_set_reputation(*, reputations: dict[int, float | None]) -> None:
    """Store the reputations matching reads (``Miner.reputation_score``), by miner pk, as ``jobs``
    computes them; only those that changed are written."""
    stored = dict(Miner.objects.filter(pk__in=list(reputations)).values_list("pk", "reputation_score"))
    for pk, reputation in reputations.items():
        if pk in stored and stored[pk] != reputation:
            Miner.objects.filter(pk=pk).update(reputation_score=reputation)
