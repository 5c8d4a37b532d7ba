from django.contrib import admin

from core.admin_bases import ReadOnlyAdmin, money
from core.models import StaffAction


@admin.register(StaffAction)
class StaffActionAdmin(ReadOnlyAdmin):
    """The audit log: every action staff took in the console, searchable by who, what, why and on what."""

    list_display = ("created_at", "actor", "action", "summary", "reason", "moved")
    list_filter = ("action", ("created_at", admin.DateFieldListFilter))
    search_fields = ("actor__username", "action", "reason", "summary")
    list_select_related = ("actor",)
    ordering = ("-created_at", "-id")
    show_full_result_count = False
    fields = ("created_at", "actor", "action", "reason", "summary", "targets", "amount")
    readonly_fields = fields

    @admin.display(ordering="amount", description="amount (AITBC)")
    def moved(self, record):
        return money(record.amount)
