from django.contrib import admin, messages

from aitbc_site.errors import ServiceError
from jobs import services
from jobs.models import Job, JobStatus


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "type",
        "model",
        "status",
        "priority",
        "client",
        "miner",
        "attempt",
        "created_at",
        "completed_at",
    )
    list_filter = ("status", "type", "priority", "model", ("created_at", admin.DateFieldListFilter))
    search_fields = ("=id", "model", "client__username", "miner__miner_id", "idempotency_key")
    list_select_related = ("client", "miner")
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    actions = ["requeue_jobs", "cancel_jobs"]
    readonly_fields = [f.name for f in Job._meta.fields]
    fieldsets = (
        (None, {"fields": ("id", "client", "type", "model", "status", "priority", "payload", "constraints")}),
        ("Attempt and lease", {"fields": ("miner", "attempt", "max_attempts", "lease_token", "lease_expires_at")}),
        ("Outcome", {"fields": ("result", "usage", "progress", "error_code", "error_message")}),
        ("Times", {"fields": ("created_at", "started_at", "completed_at", "expires_at", "ttl_seconds", "updated_at")}),
    )

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        # Jobs change only through the actions (services), never by saving the form.
        return False

    @admin.action(description="Re-queue selected running jobs")
    def requeue_jobs(self, request, queryset):
        self._apply(
            request,
            queryset.filter(status=JobStatus.RUNNING),
            "re-queued",
            lambda job: services.job_requeue(job_id=job.pk, reason=f"re-queued by {request.user}"),
        )

    @admin.action(description="Cancel selected jobs")
    def cancel_jobs(self, request, queryset):
        self._apply(
            request,
            queryset.filter(status__in=JobStatus.ACTIVE),
            "cancelled",
            lambda job: services.job_cancel(job_id=job.pk),
        )

    def _apply(self, request, queryset, verb: str, action) -> None:
        done, failed = 0, []
        for job in queryset:
            try:
                action(job)
                done += 1
            except ServiceError as exc:
                failed.append(f"{job.pk}: {exc.detail}")
        self.message_user(request, f"{done} job(s) {verb}.", messages.SUCCESS)
        if failed:
            self.message_user(request, "Not changed: " + "; ".join(failed), messages.WARNING)
