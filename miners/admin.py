from decimal import Decimal

from django.contrib import admin, messages
from django.db.models import Count, Q
from django.db.models.functions import Coalesce

from jobs.models import JobStatus
from miners import services
from miners.models import Miner, MinerStatus, ServedModel
from miners.selectors import REPUTATION_WINDOW, earnings_subquery, with_reputation


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


class ServedModelInline(admin.TabularInline):
    model = ServedModel
    extra = 0
    readonly_fields = ("name",)
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Miner)
class MinerAdmin(admin.ModelAdmin):
    list_display = (
        "miner_id",
        "owner",
        "status",
        "draining",
        "gpu_name",
        "vram_gb",
        "region",
        "last_heartbeat_at",
        "load",
        "jobs_completed",
        "earnings",
        "reputation",
        "banned_at",
    )
    list_filter = ("status", "draining", BannedFilter, "region", "served_models__name")
    search_fields = ("miner_id", "owner__username", "gpu_name", "served_models__name")
    list_select_related = ("owner",)
    inlines = [ServedModelInline]
    actions = ["drain", "undrain", "take_offline", "ban", "approve"]
    readonly_fields = [f.name for f in Miner._meta.fields if f.name != "draining"]

    def get_queryset(self, request):
        return (
            with_reputation(super().get_queryset(request))
            .annotate(
                running=Count("jobs", filter=Q(jobs__status=JobStatus.RUNNING)),
                completed=Count("jobs", filter=Q(jobs__status=JobStatus.COMPLETED)),
                earned=Coalesce(earnings_subquery(), Decimal(0)),
            )
            .distinct()
        )

    @admin.display(ordering="running", description="load")
    def load(self, miner):
        return f"{miner.running}/{miner.max_concurrent_jobs}"

    @admin.display(ordering="completed", description="jobs completed")
    def jobs_completed(self, miner):
        return miner.completed

    @admin.display(ordering="earned", description="earned (AITBC)")
    def earnings(self, miner):
        return miner.earned

    @admin.display(ordering="reputation", description=f"reputation ({REPUTATION_WINDOW.days} days)")
    def reputation(self, miner):
        if miner.reputation is None:
            return "—"
        return f"{miner.reputation:.0%} ({miner.recent_completed} done, {miner.recent_failed} failed)"

    def has_add_permission(self, request):
        return False

    def save_model(self, request, obj, form, change):
        # Only ``draining`` is editable here, and it changes through its service.
        services.miner_set_draining(miner=obj, draining=obj.draining)

    @admin.action(description="Drain: finish current jobs, take no new ones")
    def drain(self, request, queryset):
        for miner in queryset:
            services.miner_set_draining(miner=miner, draining=True)
        self.message_user(request, f"{queryset.count()} miner(s) draining.", messages.SUCCESS)

    @admin.action(description="Undrain: take new jobs again")
    def undrain(self, request, queryset):
        for miner in queryset:
            services.miner_set_draining(miner=miner, draining=False)
        self.message_user(request, f"{queryset.count()} miner(s) taking jobs again.", messages.SUCCESS)

    @admin.action(description="Take offline now and re-queue their jobs")
    def take_offline(self, request, queryset):
        released = sum(services.miner_take_offline(miner=miner) for miner in queryset.filter(status=MinerStatus.ONLINE))
        self.message_user(request, f"Miners taken offline; {released} job(s) returned to the queue.", messages.SUCCESS)

    @admin.action(description="Ban: take offline, re-queue their jobs, refuse them until approved")
    def ban(self, request, queryset):
        banned = released = 0
        for miner in queryset.filter(banned_at__isnull=True):
            released += services.miner_ban(
                miner=miner, reason=f"Banned by {request.user} from the admin.", actor=request.user
            )
            banned += 1
        self.message_user(
            request, f"{banned} miner(s) banned; {released} job(s) returned to the queue.", messages.SUCCESS
        )

    @admin.action(description="Approve: lift the ban of banned miners")
    def approve(self, request, queryset):
        approved = 0
        for miner in queryset.filter(banned_at__isnull=False):
            services.miner_unban(miner=miner, actor=request.user)
            approved += 1
        self.message_user(request, f"{approved} miner(s) approved.", messages.SUCCESS)
