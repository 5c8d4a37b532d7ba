from decimal import Decimal

from django.contrib import admin, messages
from django.db.models import Count, Q
from django.db.models.functions import Coalesce

from core.admin_bases import ReadOnlyAdmin, ReadOnlyInline
from core.errors import ServiceError
from jobs import services
from jobs.models import FailedAttempt, Job, JobStatus, Receipt, ReceiptAttestation
from jobs.selectors import REPUTATION_WINDOW, earnings_subquery, with_reputation
from miners.admin import MinerRegistryAdmin
from miners.models import Miner, MinerStatus
from payments.models import PaymentStatus


class FailedAttemptInline(ReadOnlyInline):
    model = FailedAttempt
    fields = ("created_at", "attempt", "miner", "error_code", "error_message")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("miner")


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
    list_filter = (
        "status",
        "type",
        "priority",
        "model",
        ("miner", admin.RelatedOnlyFieldListFilter),
        ("created_at", admin.DateFieldListFilter),
    )
    search_fields = ("=id", "model", "client__username", "miner__miner_id", "idempotency_key")
    list_select_related = ("client", "miner")
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    actions = ["requeue_jobs", "cancel_jobs", "refund_payments"]
    readonly_fields = [f.name for f in Job._meta.fields]
    inlines = [FailedAttemptInline]
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

    @admin.action(description="Cancel selected jobs and refund their escrow")
    def cancel_jobs(self, request, queryset):
        cancelled = self._apply(
            request,
            queryset.filter(status__in=JobStatus.ACTIVE),
            "cancelled",
            lambda job: services.job_cancel(job_id=job.pk),
        )
        refunded = sum(job.payment_status == PaymentStatus.REFUNDED for job in cancelled)
        self.message_user(request, f"{refunded} escrow(s) refunded.", messages.SUCCESS)

    @admin.action(description="Refund the escrow of selected finished jobs", permissions=["move_money"])
    def refund_payments(self, request, queryset):
        refunded, refused = 0, []
        for job in queryset.filter(payment__status=PaymentStatus.ESCROWED):
            try:
                services.job_payment_refund(job_id=job.pk, reason=f"Refunded by staff ({request.user}).")
                refunded += 1
            except ServiceError as exc:
                refused.append(f"{job.payment_id}: {exc.detail}")
        self.message_user(request, f"Refunded {refunded} payment(s).", messages.SUCCESS)
        if refused:
            self.message_user(request, "Not refunded: " + "; ".join(refused), messages.WARNING)

    def has_move_money_permission(self, request) -> bool:
        # As on the ledger's own pages: moving money takes the ledger's "add" permission.
        return request.user.has_perm("payments.add_ledgertransaction")

    def _apply(self, request, queryset, verb: str, action) -> list:
        """Run ``action`` on each job; report how many it changed and why the others were not. Returns its results."""
        done, failed = [], []
        for job in queryset:
            try:
                done.append(action(job))
            except ServiceError as exc:
                failed.append(f"{job.pk}: {exc.detail}")
        self.message_user(request, f"{len(done)} job(s) {verb}.", messages.SUCCESS)
        if failed:
            self.message_user(request, "Not changed: " + "; ".join(failed), messages.WARNING)
        return done


@admin.register(FailedAttempt)
class FailedAttemptAdmin(ReadOnlyAdmin):
    """Read-only: the attempts held against miners' reputations."""

    list_display = ("created_at", "miner", "job", "attempt", "error_code")
    list_filter = ("error_code", ("miner", admin.RelatedOnlyFieldListFilter), ("created_at", admin.DateFieldListFilter))
    search_fields = ("=job__id", "miner__miner_id", "error_code")
    list_select_related = ("miner", "job")
    date_hierarchy = "created_at"


@admin.register(Miner)
class MinerAdmin(MinerRegistryAdmin):
    """Miners with their load, completed jobs, earnings and reputation; taking one offline or
    banning it returns its jobs to the queue."""

    list_display = (
        *MinerRegistryAdmin.list_display[:-1],  # the registry's columns, ban time last
        "load",
        "jobs_completed",
        "earnings",
        "reputation",
        "banned_at",
    )
    actions = ["drain", "undrain", "take_offline", "ban", "approve"]

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


class ReceiptAttestationInline(ReadOnlyInline):
    model = ReceiptAttestation
    fields = ("alg", "key_id", "sig", "created_at")


@admin.register(Receipt)
class ReceiptAdmin(ReadOnlyAdmin):
    list_display = ("receipt_id", "job", "created_at")
    search_fields = ("=receipt_id", "=job__id")
    readonly_fields = ("receipt_id", "job", "signed_json", "created_at")
    list_select_related = ("job",)
    inlines = [ReceiptAttestationInline]
