from django.contrib import admin, messages
from django.db import transaction

from core.admin_bases import age
from core.services import staff_action_record
from miners import services
from miners.models import Miner, ServedModel
from miners.selectors import agent_seat


class BannedFilter(admin.SimpleListFilter):
    title = "banned"
    parameter_name = "banned"

    def lookups(self, request, model_admin):
        return (("yes", "Yes"), ("no", "No"))

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(banned_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(banned_at__isnull=True)
        return queryset


class MaintenanceFilter(admin.SimpleListFilter):
    title = "in maintenance"
    parameter_name = "maintenance"

    def lookups(self, request, model_admin):
        return (("yes", "Yes"), ("no", "No"))

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(maintenance_since__isnull=False)
        if self.value() == "no":
            return queryset.filter(maintenance_since__isnull=True)
        return queryset


class KindFilter(admin.SimpleListFilter):
    """GPU miners, or agents' seats in the job machinery (each agent's own miner row)."""

    title = "kind"
    parameter_name = "kind"

    def lookups(self, request, model_admin):
        return (("gpu", "GPU miners"), ("agent", "Agents"))

    def queryset(self, request, queryset):
        if self.value() == "gpu":
            return queryset.filter(~agent_seat())
        if self.value() == "agent":
            return queryset.filter(agent_seat())
        return queryset


class SuspendedFilter(admin.SimpleListFilter):
    title = "suspended"
    parameter_name = "suspended"

    def lookups(self, request, model_admin):
        return (("yes", "Yes"), ("no", "No"))

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(suspended_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(suspended_at__isnull=True)
        return queryset


class ServedModelInline(admin.TabularInline):
    model = ServedModel
    extra = 0
    readonly_fields = ("name",)
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


class MinerRegistryAdmin(admin.ModelAdmin):
    """The miners' own rows and the actions that change only them. ``jobs.admin.MinerAdmin``,
    registered for ``Miner``, adds the figures of each miner's jobs and the actions that end them."""

    list_display = ("miner_id", "owner", "state", "gpu", "heartbeat")
    list_filter = (
        "status", "draining", KindFilter, BannedFilter, MaintenanceFilter, SuspendedFilter, "region",
        "served_models__name",
    )  # fmt: skip
    search_fields = ("miner_id", "owner__username", "gpu_name", "served_models__name")
    list_select_related = ("owner",)
    inlines = [ServedModelInline]
    actions = ["drain", "undrain", "approve", "end_maintenance", "lift_suspension"]
    # The session token's hash is nobody's business, staff's included.
    readonly_fields = [f.name for f in Miner._meta.fields if f.name not in ("draining", "session_token_hash")]
    exclude = ("session_token_hash",)

    @admin.display(ordering="status", description="state")
    def state(self, miner):
        if miner.banned_at:
            return f"banned {age(miner.banned_at)}"
        if miner.maintenance_since:
            return f"maintenance since {age(miner.maintenance_since)}"
        if miner.suspended_at:
            return f"{miner.status}, suspended {age(miner.suspended_at)}"
        return f"{miner.status}, draining" if miner.draining else miner.status

    @admin.display(ordering="gpu_name", description="GPU")
    def gpu(self, miner):
        return f"{miner.gpu_name} ({miner.vram_gb:g} GB)" if miner.gpu_name else "—"

    @admin.display(ordering="last_heartbeat_at", description="last heard")
    def heartbeat(self, miner):
        return age(miner.last_heartbeat_at)

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        # A miner's jobs, receipts and earnings name it for good: it is banned or left offline instead.
        return False

    @transaction.atomic
    def save_model(self, request, obj, form, change):
        # Only ``draining`` is editable here, and it changes through its service.
        services.miner_set_draining(miner=obj, draining=obj.draining)
        self._record(request, "drain" if obj.draining else "undrain", [obj])

    def log_change(self, request, obj, message):
        # The save above recorded itself, in the audit log's words.
        pass

    @admin.action(description="Drain: finish current jobs, take no new ones")
    @transaction.atomic
    def drain(self, request, queryset):
        miners = list(queryset)
        for miner in miners:
            services.miner_set_draining(miner=miner, draining=True)
        self._record(request, "drain", miners)
        self.message_user(request, f"{len(miners)} miner(s) draining.", messages.SUCCESS)

    @admin.action(description="Undrain: take new jobs again")
    @transaction.atomic
    def undrain(self, request, queryset):
        miners = list(queryset)
        for miner in miners:
            services.miner_set_draining(miner=miner, draining=False)
        self._record(request, "undrain", miners)
        self.message_user(request, f"{len(miners)} miner(s) taking jobs again.", messages.SUCCESS)

    @admin.action(description="Approve: lift the ban of banned miners")
    @transaction.atomic
    def approve(self, request, queryset):
        approved = list(queryset.filter(banned_at__isnull=False))
        for miner in approved:
            services.miner_unban(miner=miner, actor=request.user)
        if approved:
            self._record(request, "approve", approved)
        self.message_user(request, f"{len(approved)} miner(s) approved.", messages.SUCCESS)

    @admin.action(description="End maintenance: let them come back online")
    @transaction.atomic
    def end_maintenance(self, request, queryset):
        ended = list(queryset.filter(maintenance_since__isnull=False))
        for miner in ended:
            services.miner_end_maintenance(miner=miner)
        if ended:
            self._record(request, "end maintenance", ended)
        self.message_user(request, f"{len(ended)} miner(s) out of maintenance.", messages.SUCCESS)

    @admin.action(description="Lift suspension: let them claim again")
    @transaction.atomic
    def lift_suspension(self, request, queryset):
        lifted = list(queryset.filter(suspended_at__isnull=False))
        reasons = "; ".join(f"{miner.miner_id}: {miner.suspended_reason}" for miner in lifted)
        for miner in lifted:
            services.miner_lift_suspension(miner=miner, actor=request.user)
        if lifted:
            self._record(request, "lift suspension", lifted, detail=f" Suspended for: {reasons}")
        self.message_user(request, f"{len(lifted)} suspension(s) lifted.", messages.SUCCESS)

    _SUMMARIES = {
        "lift suspension": "suspension lifted: they may claim again, and their earlier wrong answers no longer count",
        "end maintenance": "out of maintenance: they come back online at their next heartbeat",
        "maintenance": "held offline for maintenance (heartbeats refused), their jobs returned to the queue",
        "ban owner": "banned with their owners (every miner id, present and future), their jobs returned to the queue",
        "drain": "draining: finishing their jobs, taking no new ones",
        "undrain": "taking new jobs again",
        "approve": "ban lifted",
        "take offline": "taken offline, their jobs returned to the queue",
        "ban": "banned, taken offline, their jobs returned to the queue",
    }

    def _record(self, request, action: str, miners: list, *, reason: str = "", detail: str = "") -> None:
        """The audit log's entry for ``action`` on ``miners``."""
        names = ", ".join(miner.miner_id for miner in miners)
        summary = f"{len(miners)} miner(s) {self._SUMMARIES[action]}: {names}.{detail}"
        staff_action_record(
            actor=request.user, action=f"{action} miner", targets=miners, summary=summary, reason=reason
        )
