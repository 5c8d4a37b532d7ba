from django.contrib import admin

from explorer.models import Receipt


@admin.register(Receipt)
class ReceiptAdmin(admin.ModelAdmin):
    list_display = ("receipt_id", "job", "created_at")
    search_fields = ("=receipt_id", "=job__id")
    readonly_fields = ("receipt_id", "job", "signed_json", "created_at")
    list_select_related = ("job",)

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False
