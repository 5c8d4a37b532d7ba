import json
from datetime import timedelta
from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.timesince import timeuntil

from catalog.models import CatalogModel
from core.admin_bases import (
    ReadOnlyAdmin,
    ReadOnlyInline,
    age,
    confirm_action,
    money,
    outcome_chart,
    presence_filter,
)
from core.crypto import signing
from core.errors import ServiceError
from core.services import staff_action_record
from jobs import services
from jobs.models import FailedAttempt, Job, JobStatus, Receipt, ReceiptAttestation, Verdict, VerdictKind
from jobs.selectors import (
    REPUTATION_WINDOW,
    earnings_by_miner,
    failed_attempts_by_code,
    outcomes_over_time,
    verdicts_by_kind,
    with_work_figures,
)
from miners import services as miner_services
from miners.admin import MinerRegistryAdmin
from miners.models import Miner, MinerBan, MinerBanKind, MinerStatus, ServedModel
from miners.services import parse_network
from payments.models import PaymentStatus


class FailedAttemptInline(ReadOnlyInline):
    model = FailedAttempt
    fields = ("created_at", "attempt", "miner", "error_code", "error_message")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("miner")


class ModelFilter(admin.SimpleListFilter):
    """Jobs by model, offering the models of the catalog and those miners serve: listing the models
    the jobs name would read every job."""

    title = "model"
    parameter_name = "model"

    def lookups(self, request, model_admin):
        names = set(CatalogModel.objects.values_list("name", flat=True))
        names |= set(ServedModel.objects.values_list("name", flat=True).distinct())
        return [(name, name) for name in sorted(names)]

    def queryset(self, request, queryset):
        return queryset.filter(model=self.value()) if self.value() else queryset


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = (
        "short_id",
        "type",
        "model",
        "status",
        "priority",
        "client",
        "miner",
        "attempt",
        "age",
        "price_shown",
    )
    # No filter or date hierarchy that reads every job: a miner's jobs are reached from its page
    # (``?miner__id__exact=``) or by searching its id.
    list_filter = ("status", "type", "priority", ModelFilter, ("created_at", admin.DateFieldListFilter))
    search_fields = ("=id", "model", "client__username", "miner__miner_id", "idempotency_key")
    list_select_related = ("client", "miner")
    show_full_result_count = False
    ordering = ("-created_at",)
    actions = ["requeue_jobs", "cancel_jobs", "refund_payments"]
    readonly_fields = [*(f.name for f in Job._meta.fields), "money_trail"]
    inlines = [FailedAttemptInline]
    fieldsets = (
        (None, {"fields": ("id", "client", "type", "model", "status", "priority", "payload", "constraints")}),
        ("Attempt and lease", {"fields": ("miner", "attempt", "max_attempts", "lease_token", "lease_expires_at")}),
        ("Outcome", {"fields": ("result", "usage", "progress", "error_code", "error_message")}),
        ("Money and receipt", {"fields": ("money_trail",)}),
        ("Times", {"fields": ("created_at", "started_at", "completed_at", "expires_at", "ttl_seconds", "updated_at")}),
    )

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        # Jobs change only through the actions (services), never by saving the form.
        return False

    @admin.display(ordering="id", description="job")
    def short_id(self, job):
        return str(job.pk)[:8]

    @admin.display(ordering="created_at", description="submitted")
    def age(self, job):
        return age(job.created_at)

    @admin.display(ordering="price", description="price (AITBC)")
    def price_shown(self, job):
        return money(job.price)

    @admin.display(description="money")
    def money_trail(self, job):
        """The job's price, its escrow and what became of it, the ledger rows that moved it, its receipt."""
        rows = [("Price (held in escrow at submission)", f"{job.price} AITBC" if job.price is not None else "free")]
        if job.payment_id:
            payment = job.payment
            payment_url = reverse("admin:payments_payment_change", args=[payment.pk])
            rows += [
                ("Payment", format_html('<a href="{}">{}</a> ({})', payment_url, payment.payment_id, payment.status)),
                ("Escrow", f"{payment.amount} AITBC"),
                ("Charged", f"{payment.amount_charged} AITBC" if payment.amount_charged is not None else "—"),
                ("Refunded", f"{payment.amount_refunded} AITBC"),
            ]
        ledger = reverse("admin:payments_ledgertransaction_changelist") + f"?job__id__exact={job.pk}"
        rows.append(("Ledger", format_html('<a href="{}">the ledger transactions of this job</a>', ledger)))
        for receipt in job.receipts.all():
            receipt_url = reverse("admin:jobs_receipt_change", args=[receipt.pk])
            block_url = reverse("admin:explorer_blockleaf_changelist") + f"?q={receipt.pk}"
            rows.append(
                (
                    "Receipt",
                    format_html(
                        '<a href="{}">{}</a> · <a href="{}?verify=1">verify</a> · <a href="{}">its block</a>',
                        receipt_url,
                        receipt.pk,
                        receipt_url,
                        block_url,
                    ),
                )
            )
        return format_html_join(mark_safe("<br>"), "<strong>{}:</strong> {}", rows)

    @admin.action(description="Re-queue selected running jobs")
    @transaction.atomic
    def requeue_jobs(self, request, queryset):
        requeued = self._apply(
            request,
            queryset.filter(status=JobStatus.RUNNING),
            "re-queued",
            lambda job: services.job_requeue(job_id=job.pk, reason=f"re-queued by {request.user}"),
        )
        if requeued:
            summary = f"{len(requeued)} running job(s) returned to the queue: {_short_ids(requeued)}."
            staff_action_record(actor=request.user, action="re-queue jobs", targets=requeued, summary=summary)

    @admin.action(description="Cancel selected jobs and refund their escrow…")
    def cancel_jobs(self, request, queryset):
        jobs = list(queryset.filter(status__in=JobStatus.ACTIVE).select_related("payment"))
        escrowed = [job for job in jobs if job.payment_id and job.payment.status == PaymentStatus.ESCROWED]
        total = sum((job.payment.amount for job in escrowed), Decimal(0))

        @transaction.atomic
        def cancel(cleaned):
            cancelled = self._apply(request, jobs, "cancelled", lambda job: services.job_cancel(job_id=job.pk))
            refunded = [job for job in cancelled if job.payment_status == PaymentStatus.REFUNDED]
            amount = sum((job.payment.amount for job in refunded), Decimal(0))
            self.message_user(request, f"{len(refunded)} escrow(s) refunded.", messages.SUCCESS)
            if cancelled:
                summary = (
                    f"{len(cancelled)} job(s) cancelled, {len(refunded)} escrow(s) refunded to their clients: "
                    f"{_short_ids(cancelled)}."
                )
                staff_action_record(
                    actor=request.user,
                    action="cancel jobs",
                    targets=cancelled,
                    summary=summary,
                    reason=cleaned["reason"],
                    amount=amount or None,
                )

        return confirm_action(
            self,
            request,
            jobs,
            title="Cancel jobs and refund their escrow",
            changes=[f"Job {job.pk} ({job.status}, {job.client}) is cancelled." for job in jobs],
            money_moved=f"{total} AITBC in {len(escrowed)} escrow(s) goes back to the clients." if escrowed else "",
            act=cancel,
            submit="Cancel jobs",
        )

    @admin.action(description="Refund the escrow of selected finished jobs…", permissions=["move_money"])
    def refund_payments(self, request, queryset):
        jobs = list(queryset.filter(payment__status=PaymentStatus.ESCROWED).select_related("payment", "client"))
        total = sum((job.payment.amount for job in jobs), Decimal(0))

        @transaction.atomic
        def refund(cleaned):
            refunded, refused = [], []
            for job in jobs:
                try:
                    with transaction.atomic():
                        services.job_payment_refund(job_id=job.pk, reason=f"Refunded by staff ({request.user}).")
                    refunded.append(job)
                except ServiceError as exc:
                    refused.append(f"{job.payment_id}: {exc.detail}")
            amount = sum((job.payment.amount for job in refunded), Decimal(0))
            self.message_user(request, f"Refunded {len(refunded)} payment(s).", messages.SUCCESS)
            if refused:
                self.message_user(request, "Not refunded: " + "; ".join(refused), messages.WARNING)
            if refunded:
                staff_action_record(
                    actor=request.user,
                    action="refund jobs",
                    targets=refunded,
                    summary=f"{len(refunded)} escrow(s) refunded to their clients: {_short_ids(refunded)}.",
                    reason=cleaned["reason"],
                    amount=amount,
                )

        return confirm_action(
            self,
            request,
            jobs,
            title="Refund escrow",
            changes=[f"Job {job.pk} ({job.status}): {job.payment.amount} AITBC back to {job.client}." for job in jobs],
            money_moved=f"{total} AITBC leaves {len(jobs)} escrow(s) for the clients' wallets." if jobs else "",
            act=refund,
            submit="Refund",
        )

    def has_move_money_permission(self, request) -> bool:
        # As on the ledger's own pages: moving money takes the ledger's "add" permission.
        return request.user.has_perm("payments.add_ledgertransaction")

    def _apply(self, request, jobs, verb: str, action) -> list:
        """Run ``action`` on each job, each in a savepoint; report how many it changed and why the others
        were not. Returns its results."""
        done, failed = [], []
        for job in jobs:
            try:
                with transaction.atomic():
                    done.append(action(job))
            except ServiceError as exc:
                failed.append(f"{job.pk}: {exc.detail}")
        self.message_user(request, f"{len(done)} job(s) {verb}.", messages.SUCCESS)
        if failed:
            self.message_user(request, "Not changed: " + "; ".join(failed), messages.WARNING)
        return done


def _short_ids(jobs) -> str:
    return ", ".join(str(job.pk)[:8] for job in jobs)


@admin.register(FailedAttempt)
class FailedAttemptAdmin(ReadOnlyAdmin):
    """Read-only: the attempts held against miners' reputations."""

    list_display = ("when", "miner", "job_short_id", "attempt", "error_code")
    # A miner's attempts are reached from its page (``?miner__id__exact=``) or by searching its id:
    # a filter listing every miner would not fit the page.
    list_filter = ("error_code", ("created_at", admin.DateFieldListFilter))
    ordering = ("-created_at",)
    search_fields = ("=job__id", "miner__miner_id", "error_code")
    list_select_related = ("miner",)
    show_full_result_count = False

    @admin.display(ordering="created_at", description="when")
    def when(self, attempt):
        return age(attempt.created_at)

    @admin.display(ordering="job_id", description="job")
    def job_short_id(self, attempt):
        return str(attempt.job_id)[:8]


@admin.register(Verdict)
class VerdictAdmin(ReadOnlyAdmin):
    """Verdicts on miners' answers: agreed or outvoted attempts of verified jobs, canaries passed
    or failed. Wrong answers lower a miner's reputation and may suspend it."""

    list_display = ("when", "miner", "kind", "job_short_id", "parent_short_id")
    list_select_related = ("miner", "job")
    list_filter = ("kind", ("created_at", admin.DateFieldListFilter))
    search_fields = ("miner__miner_id", "=job__id", "=job__parent__id")
    show_full_result_count = False

    @admin.display(ordering="created_at", description="when")
    def when(self, verdict):
        return age(verdict.created_at)

    @admin.display(ordering="job_id", description="attempt")
    def job_short_id(self, verdict):
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:jobs_job_change", args=[verdict.job_id]), str(verdict.job_id)[:8]
        )

    @admin.display(description="verified job")
    def parent_short_id(self, verdict):
        parent = verdict.job.parent_id
        if parent is None:
            return "—"
        return format_html('<a href="{}">{}</a>', reverse("admin:jobs_job_change", args=[parent]), str(parent)[:8])


@admin.register(Miner)
class MinerAdmin(MinerRegistryAdmin):
    """Miners with their load, completed jobs, earnings and reputation; taking one offline or
    banning it returns its jobs to the queue."""

    list_display = (*MinerRegistryAdmin.list_display, "load", "jobs_completed", "earnings", "reputation")
    change_form_template = "admin/jobs/miner_change_form.html"
    readonly_fields = [
        *MinerRegistryAdmin.readonly_fields,
        "reputation",
        "earned_exact",
        "jobs_completed",
        "hourly",
        "running_jobs",
        "recent_jobs",
        "failures",
        "verdicts",
    ]
    # The miner page's buttons: the list's actions, for this miner.
    _BUTTONS = {
        "drain": "Drain",
        "undrain": "Undrain",
        "take_offline": "Take offline",
        "maintenance": "Maintenance…",
        "end_maintenance": "End maintenance",
        "ban": "Ban…",
        "ban_owner": "Ban owner…",
        "approve": "Approve (lift ban)",
        "lift_suspension": "Lift suspension",
    }
    fieldsets = (
        (
            None,
            {"fields": ("miner_id", "owner", "status", "draining", "in_cluster", "registered_at", "last_heartbeat_at")},
        ),
        (
            "Work",
            {
                "fields": (
                    "reputation",
                    "earned_exact",
                    "jobs_completed",
                    "hourly",
                    "running_jobs",
                    "recent_jobs",
                    "failures",
                )
            },
        ),
        (
            "Bans, maintenance and suspension",
            {
                "fields": (
                    "banned_at",
                    "banned_reason",
                    "banned_by",
                    "maintenance_since",
                    "maintenance_reason",
                    "suspended_at",
                    "suspended_reason",
                    "suspension_lifted_at",
                    "verdicts",
                )
            },
        ),
        (
            "Hardware and reports",
            {
                "fields": (
                    "gpu_name",
                    "vram_gb",
                    "cuda_version",
                    "region",
                    "price",
                    "max_concurrent_jobs",
                    "public_key",
                    "last_address",
                    "capabilities",
                    "inflight_reported",
                    "metadata",
                )
            },
        ),
    )
    actions = [
        "drain", "undrain", "take_offline", "maintenance", "end_maintenance", "ban", "ban_owner", "approve",
        "lift_suspension",
    ]  # fmt: skip

    def get_queryset(self, request):
        return with_work_figures(super().get_queryset(request))

    def get_changelist_instance(self, request):
        changelist = super().get_changelist_instance(request)
        earned = earnings_by_miner(changelist.result_list)
        for miner in changelist.result_list:
            miner.earned = earned[miner.pk]
        return changelist

    def get_object(self, request, object_id, from_field=None):
        miner = super().get_object(request, object_id, from_field)
        if miner is not None:
            miner.earned = earnings_by_miner([miner])[miner.pk]
        return miner

    @admin.display(ordering="running", description="load")
    def load(self, miner):
        return f"{miner.running}/{miner.max_concurrent_jobs}"

    @admin.display(ordering="completed", description="jobs completed")
    def jobs_completed(self, miner):
        return miner.completed

    # Not sortable: ordering every miner by earnings would read every settlement.
    @admin.display(description="earned (AITBC)")
    def earnings(self, miner):
        return money(miner.earned)

    @admin.display(description="earned")
    def earned_exact(self, miner):
        return f"{miner.earned} AITBC"

    @admin.display(description="the last 24 hours")
    def hourly(self, miner):
        since = timezone.now() - timedelta(hours=23, minutes=59)
        buckets = outcomes_over_time(since=since, step=timedelta(hours=1), miner=miner)
        return format_html(
            "{} per hour: completed jobs in green, failed attempts in red",
            outcome_chart(buckets, label=f"Jobs {miner.miner_id} completed and attempts it failed, per hour"),
        )

    @admin.display(description="running jobs (lease age)")
    def running_jobs(self, miner):
        running = Job.objects.filter(miner=miner, status=JobStatus.RUNNING).order_by("started_at")[:50]
        return (
            format_html_join(
                mark_safe("<br>"),
                '<a href="{}">{}</a> {} · started {} · lease ends in {}',
                (
                    (
                        reverse("admin:jobs_job_change", args=[job.pk]),
                        str(job.pk)[:8],
                        job.model,
                        age(job.started_at),
                        timeuntil(job.lease_expires_at) if job.lease_expires_at else "—",
                    )
                    for job in running
                ),
            )
            or "none"
        )

    @admin.display(description="recent jobs")
    def recent_jobs(self, miner):
        recent = Job.objects.filter(miner=miner).order_by("-created_at")[:10]
        listed = format_html_join(
            mark_safe("<br>"),
            '<a href="{}">{}</a> {} · {} · {}',
            (
                (
                    reverse("admin:jobs_job_change", args=[job.pk]),
                    str(job.pk)[:8],
                    job.model,
                    job.status,
                    age(job.created_at),
                )
                for job in recent
            ),
        )
        every = reverse("admin:jobs_job_changelist") + f"?miner__id__exact={miner.pk}"
        return format_html('{}<br><a href="{}">all of its jobs</a>', listed or "none", every)

    @admin.display(description=f"failed attempts by code ({REPUTATION_WINDOW.days} days)")
    def failures(self, miner):
        counts = failed_attempts_by_code(miner=miner)
        every = reverse("admin:jobs_failedattempt_changelist") + f"?miner__id__exact={miner.pk}"
        listed = format_html_join(", ", "{} × {}", ((n, code) for code, n in counts))
        return format_html('{} <a href="{}">(all)</a>', listed or "none", every)

    @admin.display(description=f"verdicts on its answers ({REPUTATION_WINDOW.days} days)")
    def verdicts(self, miner):
        counts = verdicts_by_kind(miner=miner)
        every = reverse("admin:jobs_verdict_changelist") + f"?miner__id__exact={miner.pk}"
        listed = format_html_join(", ", "{} × {}", ((n, VerdictKind(kind).label.lower()) for kind, n in counts))
        return format_html('{} <a href="{}">(all)</a>', listed or "none", every)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        allowed = self.get_actions(request)
        buttons = [(name, label) for name, label in self._BUTTONS.items() if name in allowed]
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), "miner_actions": buttons})

    @admin.display(ordering="reputation", description=f"reputation ({REPUTATION_WINDOW.days} days)")
    def reputation(self, miner):
        if miner.reputation is None:
            return "—"
        wrong = f", {miner.recent_wrong} wrong" if miner.recent_wrong else ""
        return f"{miner.reputation:.0%} ({miner.recent_completed} done, {miner.recent_failed} failed{wrong})"

    @admin.action(description="Take offline now and re-queue their jobs")
    @transaction.atomic
    def take_offline(self, request, queryset):
        miners = list(queryset.filter(status=MinerStatus.ONLINE))
        released = sum(services.miner_take_offline(miner=miner) for miner in miners)
        if miners:
            self._record(request, "take offline", miners, detail=f" {released} job(s) re-queued.")
        self.message_user(request, f"Miners taken offline; {released} job(s) returned to the queue.", messages.SUCCESS)

    @admin.action(description="Ban: take offline, re-queue their jobs, refuse them until approved…")
    def ban(self, request, queryset):
        # The list's queryset, with its figures (``running``).
        miners = list(queryset.filter(banned_at__isnull=True))

        @transaction.atomic
        def act(cleaned):
            reason = cleaned["reason"]
            released = sum(services.miner_ban(miner=miner, reason=reason, actor=request.user) for miner in miners)
            if miners:
                self._record(request, "ban", miners, reason=reason, detail=f" {released} job(s) re-queued.")
            self.message_user(
                request, f"{len(miners)} miner(s) banned; {released} job(s) returned to the queue.", messages.SUCCESS
            )

        return confirm_action(
            self,
            request,
            miners,
            title="Ban miners",
            changes=[
                f"Miner {miner.miner_id} ({miner.owner}, {miner.status}) is banned: it may not register, heartbeat "
                f"or claim until approved; its {miner.running} running job(s) return to the queue."
                for miner in miners
            ],
            act=act,
            submit="Ban",
        )

    @admin.action(description="Maintenance: hold offline until ended (heartbeats refused), re-queue their jobs…")
    def maintenance(self, request, queryset):
        miners = list(queryset.filter(maintenance_since__isnull=True, banned_at__isnull=True))

        @transaction.atomic
        def act(cleaned):
            reason = cleaned["reason"]
            released = sum(services.miner_put_in_maintenance(miner=miner, reason=reason) for miner in miners)
            if miners:
                self._record(request, "maintenance", miners, reason=reason, detail=f" {released} job(s) re-queued.")
            self.message_user(
                request,
                f"{len(miners)} miner(s) in maintenance; {released} job(s) returned to the queue.",
                messages.SUCCESS,
            )

        return confirm_action(
            self,
            request,
            miners,
            title="Take miners offline for maintenance",
            changes=[
                f"Miner {miner.miner_id} goes offline until maintenance ends; it is told the reason (403) at its next "
                f"heartbeat or poll; its {miner.running} running job(s) return to the queue."
                for miner in miners
            ],
            act=act,
            submit="Start maintenance",
        )

    @admin.action(description="Ban owner: every miner id of their owners, present and future…")
    def ban_owner(self, request, queryset):
        owners = {miner.owner for miner in queryset.select_related("owner")}
        covered = list(Miner.objects.filter(owner__in=owners).select_related("owner").order_by("owner_id", "miner_id"))

        @transaction.atomic
        def act(cleaned):
            reason, banned, released = cleaned["reason"], [], 0
            for owner in sorted(owners, key=lambda user: user.username):
                ban, now_banned, freed = services.miner_ban_wide(
                    kind=MinerBanKind.OWNER, owner=owner, reason=reason, actor=request.user
                )
                banned += now_banned
                released += freed
                staff_action_record(
                    actor=request.user,
                    action="ban owner",
                    targets=[ban, *now_banned],
                    summary=f"Owner {owner} banned: every miner id refused; {len(now_banned)} miner(s) banned now, "
                    f"{freed} job(s) re-queued.",
                    reason=reason,
                )
            self.message_user(
                request,
                f"{len(owners)} owner(s) banned; {len(banned)} miner(s) banned; {released} job(s) returned to the queue.",
                messages.SUCCESS,
            )

        return confirm_action(
            self,
            request,
            queryset,
            title="Ban owners",
            changes=[
                f"Owner {owner} is banned: no miner id of theirs may register, heartbeat or poll, new ones included."
                for owner in sorted(owners, key=lambda user: user.username)
            ]
            + [f"Miner {miner.miner_id} ({miner.owner}) is banned." for miner in covered if not miner.banned_at],
            act=act,
            submit="Ban owners",
        )


class MinerBanForm(forms.ModelForm):
    class Meta:
        model = MinerBan
        fields = ("kind", "owner", "network", "reason")

    def clean(self):
        cleaned = super().clean()
        kind = cleaned.get("kind")
        if kind == MinerBanKind.OWNER:
            cleaned["network"] = ""
            if not cleaned.get("owner"):
                self.add_error("owner", "An owner ban names its owner.")
        if kind == MinerBanKind.NETWORK:
            cleaned["owner"] = None
            try:
                cleaned["network"] = str(parse_network(cleaned.get("network") or ""))
            except ServiceError as exc:
                self.add_error("network", exc.detail)
        return cleaned


@admin.register(MinerBan)
class MinerBanAdmin(admin.ModelAdmin):
    """Bans wider than one miner id: an owner's every miner, or an address range. Adding one bans the
    registered miners it covers and refuses the registrations it covers; lifting it lets them register again."""

    form = MinerBanForm
    list_display = ("created_at", "kind", "target", "reason", "banned_by", "lifted_at")
    list_filter = ("kind", ("lifted_at", presence_filter("lifted", empty="In force", filled="Lifted")))
    search_fields = ("owner__username", "network", "reason")
    list_select_related = ("owner", "banned_by")
    autocomplete_fields = ("owner",)
    actions = ["lift"]

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @transaction.atomic
    def save_model(self, request, obj, form, change):
        ban, banned, released = services.miner_ban_wide(
            kind=obj.kind, owner=obj.owner, network=obj.network, reason=obj.reason, actor=request.user
        )
        obj.pk, obj.created_at = ban.pk, ban.created_at
        staff_action_record(
            actor=request.user,
            action=f"ban {ban.kind}",
            targets=[ban, *banned],
            summary=f"{ban} created; {len(banned)} registered miner(s) banned now, {released} job(s) re-queued.",
            reason=ban.reason,
        )

    def log_addition(self, request, obj, message):
        # The save above recorded itself, in the audit log's words.
        pass

    @admin.action(description="Lift: let the owner or range register again")
    @transaction.atomic
    def lift(self, request, queryset):
        lifted = list(queryset.filter(lifted_at__isnull=True))
        for ban in lifted:
            miner_services.miner_ban_lift(ban=ban, actor=request.user)
        if lifted:
            staff_action_record(
                actor=request.user,
                action="lift ban",
                targets=lifted,
                summary=f"{len(lifted)} ban(s) lifted: " + ", ".join(str(ban) for ban in lifted) + ".",
            )
        self.message_user(request, f"{len(lifted)} ban(s) lifted.", messages.SUCCESS)


class ReceiptAttestationInline(ReadOnlyInline):
    model = ReceiptAttestation
    fields = ("alg", "key_id", "sig", "created_at")


@admin.register(Receipt)
class ReceiptAdmin(ReadOnlyAdmin):
    """Receipts as signed; ``?verify=1`` on a receipt's page checks its signature against the
    coordinator's trusted keys."""

    list_display = ("short_receipt_id", "job_short_id", "issued")
    search_fields = ("=receipt_id", "=job__id")
    fields = ("receipt_id", "job", "created_at", "document")
    readonly_fields = fields
    show_full_result_count = False
    ordering = ("-created_at",)
    inlines = [ReceiptAttestationInline]

    @admin.display(ordering="receipt_id", description="receipt")
    def short_receipt_id(self, receipt):
        return receipt.receipt_id[:12]

    @admin.display(ordering="job_id", description="job")
    def job_short_id(self, receipt):
        return str(receipt.job_id)[:8]

    @admin.display(ordering="created_at", description="issued")
    def issued(self, receipt):
        return age(receipt.created_at)

    @admin.display(description="signed receipt")
    def document(self, receipt):
        verify = format_html('<a class="button" href="{}">{}</a>', "?verify=1", "Verify the signature")
        shown = json.dumps(receipt.served_document(), indent=2, sort_keys=True)
        return format_html("{}<pre>{}</pre>", verify, shown)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        receipt = self.get_object(request, object_id) if request.GET.get("verify") else None
        if receipt is not None:
            valid, reason = signing.verify(receipt.document, trusted_key_ids=signing.trusted_key_ids())
            if valid:
                self.message_user(
                    request, "The signature verifies: the coordinator signed this receipt.", messages.SUCCESS
                )
            else:
                self.message_user(request, f"The receipt does not verify: {reason}.", messages.ERROR)
        return super().change_view(request, object_id, form_url, extra_context)
