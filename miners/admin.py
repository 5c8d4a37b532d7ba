from django.contrib import admin, messages
from django.db.models import Count, Q

from jobs.models import JobStatus
from miners import services
from miners.models import Miner, MinerStatus, ServedModel


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
        "running_jobs",
        "max_concurrent_jobs",
        "last_heartbeat_at",
    )
    list_filter = ("status", "draining", "region", "served_models__name")
    search_fields = ("miner_id", "owner__username", "gpu_name", "served_models__name")
    list_select_related = ("owner",)
    inlines = [ServedModelInline]
    actions = ["drain", "undrain", "take_offline"]
    readonly_fields = [f.name for f in Miner._meta.fields if f.name != "draining"]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(running=Count("jobs", filter=Q(jobs__status=JobStatus.RUNNING)))
            .distinct()
        )

    @admin.display(ordering="running", description="running")
    def running_jobs(self, miner):
        return miner.running

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
