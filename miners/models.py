from django.conf import settings
from django.db import models
from django.db.models import Q


class MinerStatus(models.TextChoices):
    ONLINE = "online", "Online"
    OFFLINE = "offline", "Offline"
    DEREGISTERED = "deregistered", "Deregistered"


class Miner(models.Model):
    """A GPU host that takes jobs. ``miner_id`` is its public name (``X-Miner-ID``)."""

    miner_id = models.CharField(max_length=128, unique=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="miners")
    status = models.CharField(max_length=16, choices=MinerStatus.choices, default=MinerStatus.ONLINE)
    draining = models.BooleanField(default=False, help_text="A draining miner finishes its jobs but gets no new ones.")
    in_cluster = models.BooleanField(
        default=False,
        help_text="A Dramatiq worker host of this platform (woken through the broker), not an HTTP miner.",
    )

    capabilities = models.JSONField(default=dict, blank=True, help_text="As the miner last reported them.")
    gpu_name = models.CharField(max_length=200, blank=True)
    vram_gb = models.FloatField(default=0)
    cuda_version = models.CharField(max_length=16, blank=True)
    cuda_code = models.PositiveIntegerField(null=True, blank=True, help_text="major × 1000 + minor, for matching.")
    region = models.CharField(max_length=64, blank=True)
    price = models.DecimalField(max_digits=18, decimal_places=8, null=True, blank=True)
    max_concurrent_jobs = models.PositiveIntegerField(default=1)
    public_key = models.CharField(max_length=128, blank=True)

    inflight_reported = models.PositiveIntegerField(default=0)
    metadata = models.JSONField(default=dict, blank=True)
    session_token_hash = models.CharField(max_length=64, blank=True, editable=False)

    banned_at = models.DateTimeField(
        null=True, blank=True, help_text="A banned miner may not register, heartbeat or claim until unbanned."
    )
    banned_reason = models.CharField(max_length=300, blank=True)
    banned_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    suspended_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Suspended for wrong answers (outvoted, failed canaries): it may not claim until staff lift it.",
    )
    suspended_reason = models.CharField(max_length=300, blank=True)
    suspension_lifted_at = models.DateTimeField(
        null=True, blank=True, help_text="Wrong answers before this no longer count towards a suspension."
    )
    reputation_score = models.FloatField(
        null=True,
        blank=True,
        help_text="The reputation as last computed (after each verdict and housekeeping), which matching reads.",
    )

    maintenance_since = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Staff took the miner offline for maintenance: it is refused (its heartbeats too) until they end it.",
    )
    maintenance_reason = models.CharField(max_length=300, blank=True)
    last_address = models.GenericIPAddressField(null=True, blank=True, help_text="Where it last registered from.")

    registered_at = models.DateTimeField(auto_now_add=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["miner_id"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=MinerStatus.values), name="miner_status_valid"),
            models.CheckConstraint(condition=Q(max_concurrent_jobs__gte=1), name="miner_concurrency_positive"),
            models.CheckConstraint(condition=Q(vram_gb__gte=0), name="miner_vram_non_negative"),
            models.CheckConstraint(
                condition=Q(banned_at__isnull=True) | ~Q(status=MinerStatus.ONLINE), name="miner_banned_not_online"
            ),
            models.CheckConstraint(
                condition=Q(maintenance_since__isnull=True) | ~Q(status=MinerStatus.ONLINE),
                name="miner_maintenance_not_online",
            ),
        ]
        indexes = [
            models.Index(fields=["last_heartbeat_at"], condition=Q(status="online"), name="miner_online_hb_idx"),
        ]

    def __str__(self) -> str:
        return self.miner_id

    @property
    def accepts_work(self) -> bool:
        return self.status == MinerStatus.ONLINE and not self.draining and self.suspended_at is None


class ServedModel(models.Model):
    """A model a miner serves; claims and ``is_possible`` match jobs against these rows."""

    miner = models.ForeignKey(Miner, on_delete=models.CASCADE, related_name="served_models")
    name = models.CharField(max_length=200, db_index=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["miner", "name"], name="served_model_unique")]

    def __str__(self) -> str:
        return f"{self.miner_id}:{self.name}"


class MinerBanKind(models.TextChoices):
    OWNER = "owner", "Owner (every miner id, every key)"
    NETWORK = "network", "Address range"


class MinerBan(models.Model):
    """A ban wider than one miner: every miner of an owner, registered or yet to come, or every
    miner registering from an address range. ``Miner.banned_at`` bans one miner id."""

    kind = models.CharField(max_length=16, choices=MinerBanKind.choices)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="miner_bans"
    )
    network = models.CharField(
        max_length=50, blank=True, help_text="An address or a range: 203.0.113.0/24, 2001:db8::/32."
    )
    reason = models.CharField(max_length=300)
    banned_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    lifted_at = models.DateTimeField(null=True, blank=True)
    lifted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(kind__in=MinerBanKind.values), name="miner_ban_kind_valid"),
            models.CheckConstraint(
                condition=Q(kind=MinerBanKind.OWNER, owner__isnull=False, network="")
                | Q(kind=MinerBanKind.NETWORK, owner__isnull=True) & ~Q(network=""),
                name="miner_ban_names_its_target",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} ban of {self.owner or self.network}"

    @property
    def target(self) -> str:
        return str(self.owner) if self.kind == MinerBanKind.OWNER else self.network
