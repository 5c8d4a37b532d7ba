from django.contrib import admin, messages

from miners import services
from miners.models import Miner, ServedModel


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


class MinerRegistryAdmin(admin.ModelAdmin):
    """The miners' own rows and the actions that change only them. ``jobs.admin.MinerAdmin``,
    registered for ``Miner``, adds the figures of each miner's jobs and the actions that end them."""

    list_display = (
        "miner_id",
        "owner",
        "status",
        "draining",
        "gpu_name",
        "vram_gb",
        "region",
        "last_heartbeat_at",
        "banned_at",
    )
    list_filter = ("status", "draining", BannedFilter, "region", "served_models__name")
    search_fields = ("miner_id", "owner__username", "gpu_name", "served_models__name")
    list_select_related = ("owner",)
    inlines = [ServedModelInline]
    actions = ["drain", "undrain", "approve"]
    readonly_fields = [f.name for f in Miner._meta.fields if f.name != "draining"]

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

    @admin.action(description="Approve: lift the ban of banned miners")
    def approve(self, request, queryset):
        approved = 0
        for miner in queryset.filter(banned_at__isnull=False):
            services.miner_unban(miner=miner, actor=request.user)
            approved += 1
        self.message_user(request, f"{approved} miner(s) approved.", messages.SUCCESS)
