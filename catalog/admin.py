from django.contrib import admin

from catalog.models import CatalogModel
from catalog.selectors import catalog_with_miner_counts


@admin.register(CatalogModel)
class CatalogModelAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "task",
        "source_kind",
        "source",
        "price_per_1k_tokens",
        "max_tokens",
        "enabled",
        "online_miners",
    ]
    list_filter = ["task", "source_kind", "enabled"]
    search_fields = ["name", "source", "description"]
    readonly_fields = ["created_at", "updated_at"]
    list_editable = ["enabled"]

    def get_queryset(self, request):
        return catalog_with_miner_counts(enabled_only=False)

    @admin.display(description="Online miners", ordering="online_miners")
    def online_miners(self, obj) -> int:
        return obj.online_miners
