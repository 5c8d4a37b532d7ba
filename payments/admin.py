"""Staff views of the ledger. Nothing here edits or deletes a ledger row: credits are actions that
post new, audited transactions through the services (a job's refund is an action on the job)."""

import secrets
from decimal import Decimal

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db import transaction
from django.db.models import Prefetch
from django.template.response import TemplateResponse

from core.admin_bases import ReadOnlyAdmin, ReadOnlyInline, confirm_action, money
from core.errors import ServiceError
from core.services import staff_action_record
from payments import exchange
from payments.models import (
    AMOUNT,
    ExchangePayment,
    LedgerEntry,
    LedgerTransaction,
    Payment,
    PendingCredit,
    PendingCreditStatus,
    Wallet,
    WalletKind,
)
from payments.services import credit_approve, credit_decline, credit_needs_approval, credit_request, treasury_mint


class MoneyAdmin(ReadOnlyAdmin):
    """The ledger is append-only (PostgreSQL triggers refuse the rest): staff may look, not touch;
    money moves only through the actions, which call services."""

    def has_move_money_permission(self, request) -> bool:
        # Seeing the ledger is not enough to mint, refund or confirm: that takes the ledger's own
        # "add" permission (superusers have it).
        return request.user.has_perm("payments.add_ledgertransaction")


class CreditForm(forms.Form):
    amount = forms.DecimalField(**AMOUNT, min_value=Decimal("0.00000001"), help_text="AITBC to mint into each wallet")
    reason = forms.CharField(max_length=300, help_text="Kept on the transaction with your name and the time")
    # One token per form shown: submitting the same form twice credits once.
    token = forms.CharField(widget=forms.HiddenInput)


class EmptyEscrowFilter(admin.SimpleListFilter):
    """Every paid job has an escrow wallet of its own, empty once the job settles: hidden unless asked for."""

    title = "empty escrows"
    parameter_name = "empty_escrows"

    def lookups(self, request, model_admin):
        return (("shown", "Shown"),)

    def choices(self, changelist):
        yield {
            "selected": self.value() is None,
            "query_string": changelist.get_query_string(remove=[self.parameter_name]),
            "display": "Hidden",
        }
        yield from list(super().choices(changelist))[1:]

    def queryset(self, request, queryset):
        if self.value() == "shown":
            return queryset
        return queryset.exclude(kind=WalletKind.ESCROW, balance=0)


@admin.register(Wallet)
class WalletAdmin(MoneyAdmin):
    list_display = ("short_address", "kind", "user", "balance_shown", "created_at")
    list_filter = (EmptyEscrowFilter, "kind")
    search_fields = ("address", "user__username")
    list_select_related = ("user",)
    ordering = ("id",)
    actions = ["credit"]

    @admin.display(ordering="address", description="address")
    def short_address(self, wallet):
        return f"{wallet.address[:14]}…"

    @admin.display(ordering="balance", description="balance (AITBC)")
    def balance_shown(self, wallet):
        return money(wallet.balance)

    @admin.action(description="Credit… (mint credits into the selected user wallets)", permissions=["move_money"])
    def credit(self, request, queryset):
        if "apply" in request.POST:
            form = CreditForm(request.POST)
            if form.is_valid():
                self._credit(request, queryset, **form.cleaned_data)
                return None
        else:
            form = CreditForm(initial={"token": secrets.token_hex(16)})
        return TemplateResponse(
            request,
            "admin/payments/wallet/credit.html",
            {
                **self.admin_site.each_context(request),
                "title": "Credit wallets",
                "opts": self.model._meta,
                "form": form,
                "objects": queryset,
                "action": "credit",
                "submit": "Credit",
                "threshold": settings.ADMIN_CREDIT_APPROVAL_THRESHOLD,
                "action_checkbox_name": ACTION_CHECKBOX_NAME,
            },
        )

    @transaction.atomic
    def _credit(self, request, queryset, *, amount: Decimal, reason: str, token: str) -> None:
        wallets = list(queryset.filter(kind=WalletKind.USER).select_related("user"))
        total = amount * len(wallets)
        owners = ", ".join(str(wallet.user or wallet.address) for wallet in wallets)
        if wallets and credit_needs_approval(total=total):
            requests = credit_request(wallets=wallets, amount=amount, reason=reason, actor=request.user)
            staff_action_record(
                actor=request.user,
                action="request credit",
                targets=[*requests, *wallets],
                summary=f"{amount} AITBC into each of {len(wallets)} wallet(s) ({owners}), {total} in all, asked "
                f"for: above {settings.ADMIN_CREDIT_APPROVAL_THRESHOLD} AITBC, it waits for a second staff member.",
                reason=reason,
                amount=total,
            )
            self.message_user(
                request,
                f"{total} AITBC is above {settings.ADMIN_CREDIT_APPROVAL_THRESHOLD} AITBC: {len(requests)} credit(s) "
                "wait for another staff member's approval under Pending credits.",
                messages.WARNING,
            )
        else:
            for wallet in wallets:
                treasury_mint(
                    wallet=wallet,
                    amount=amount,
                    actor=request.user,
                    memo=reason,
                    business_key=f"credit:{token}:{wallet.address}",
                )
            if wallets:
                staff_action_record(
                    actor=request.user,
                    action="credit wallets",
                    targets=wallets,
                    summary=f"{amount} AITBC minted into each of {len(wallets)} wallet(s) ({owners}), {total} in all.",
                    reason=reason,
                    amount=total,
                )
            self.message_user(request, f"Credited {amount} AITBC to {len(wallets)} wallet(s).", messages.SUCCESS)
        skipped = queryset.exclude(kind=WalletKind.USER).count()
        if skipped:
            self.message_user(request, f"{skipped} system or escrow wallet(s) skipped.", messages.WARNING)


@admin.register(PendingCredit)
class PendingCreditAdmin(MoneyAdmin):
    """Credits above the approval threshold, waiting for a second staff member."""

    list_display = ("created_at", "wallet_owner", "amount", "reason", "requested_by", "status", "decided_by")
    list_filter = ("status",)
    search_fields = ("wallet__address", "wallet__user__username", "requested_by__username", "reason")
    list_select_related = ("wallet__user", "requested_by", "decided_by")
    actions = ["approve", "decline"]

    @admin.display(description="wallet", ordering="wallet__user__username")
    def wallet_owner(self, pending):
        return pending.wallet.user or pending.wallet.address

    @admin.action(description="Approve and mint…", permissions=["move_money"])
    def approve(self, request, queryset):
        pending = list(
            queryset.filter(status=PendingCreditStatus.PENDING).select_related("wallet__user", "requested_by")
        )
        total = sum((credit.amount for credit in pending), Decimal(0))

        @transaction.atomic
        def act(cleaned):
            self._decide(request, pending, credit_approve, "approve credit", cleaned["reason"])

        return confirm_action(
            self,
            request,
            pending,
            title="Approve credits",
            changes=[
                f"{credit.amount} AITBC minted into {credit.wallet.user or credit.wallet.address}, asked for by "
                f"{credit.requested_by}: {credit.reason}"
                for credit in pending
            ],
            money_moved=f"{total} AITBC minted by the treasury." if pending else "",
            act=act,
            submit="Approve and mint",
        )

    @admin.action(description="Decline", permissions=["move_money"])
    @transaction.atomic
    def decline(self, request, queryset):
        pending = list(queryset.filter(status=PendingCreditStatus.PENDING))
        self._decide(request, pending, credit_decline, "decline credit", "")

    def _decide(self, request, pending, decide, action: str, reason: str) -> None:
        done, refused = [], []
        for credit in pending:
            try:
                with transaction.atomic():
                    done.append(decide(pending=credit, actor=request.user))
            except ServiceError as exc:
                refused.append(f"{credit.pk}: {exc.detail}")
        verb = "minted" if decide is credit_approve else "declined"
        total = sum((credit.amount for credit in done), Decimal(0))
        if done:
            staff_action_record(
                actor=request.user,
                action=action,
                targets=done,
                summary=f"{len(done)} credit(s) {verb}, {total} AITBC in all.",
                reason=reason,
                amount=total if decide is credit_approve else None,
            )
        self.message_user(request, f"{len(done)} credit(s) {verb} ({total} AITBC).", messages.SUCCESS)
        if refused:
            self.message_user(request, "Not decided: " + "; ".join(refused), messages.WARNING)


def _party(wallet: Wallet) -> str:
    """A wallet as staff know it: its user, else its kind."""
    if wallet.user_id:
        return str(wallet.user)
    return wallet.get_kind_display().lower() if wallet.kind != WalletKind.ESCROW else "escrow"


class LedgerEntryInline(ReadOnlyInline):
    model = LedgerEntry
    fields = ("wallet", "amount")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("wallet")


@admin.register(LedgerTransaction)
class LedgerTransactionAdmin(MoneyAdmin):
    list_display = ("id", "created_at", "kind", "moved", "parties", "actor", "memo")
    list_filter = ("kind", ("created_at", admin.DateFieldListFilter))
    search_fields = (
        "business_key",
        "memo",
        "actor__username",
        "entries__wallet__address",
        "entries__wallet__user__username",
    )
    list_select_related = ("actor",)
    show_full_result_count = False
    ordering = ("-id",)

    def get_queryset(self, request):
        entries = LedgerEntry.objects.select_related("wallet__user").order_by("amount", "id")
        return super().get_queryset(request).prefetch_related(Prefetch("entries", queryset=entries))

    @admin.display(description="amount (AITBC)")
    def moved(self, tx):
        return money(sum((entry.amount for entry in tx.entries.all() if entry.amount > 0), Decimal(0)))

    @admin.display(description="from → to")
    def parties(self, tx):
        debited = [_party(entry.wallet) for entry in tx.entries.all() if entry.amount < 0]
        credited = [_party(entry.wallet) for entry in tx.entries.all() if entry.amount > 0]
        return f"{', '.join(debited)} → {', '.join(credited)}"

    inlines = [LedgerEntryInline]
    fields = ("business_key", "kind", "job", "memo", "actor", "created_at")
    readonly_fields = fields


@admin.register(Payment)
class PaymentAdmin(MoneyAdmin):
    list_display = (
        "payment_id",
        "job_short_id",
        "payer_user",
        "amount_shown",
        "status",
        "paid",
        "refunded",
        "created_at",
    )
    list_filter = ("status", ("created_at", admin.DateFieldListFilter))
    search_fields = ("payment_id", "=job__id", "payer__address", "payer__user__username")
    list_select_related = ("payer__user", "job")
    show_full_result_count = False
    ordering = ("-created_at",)

    @admin.display(ordering="job__id", description="job")
    def job_short_id(self, payment):
        job = getattr(payment, "job", None)
        return str(job.pk)[:8] if job else "—"

    @admin.display(ordering="payer__user__username", description="payer")
    def payer_user(self, payment):
        return payment.payer.user or payment.payer.address

    @admin.display(ordering="amount", description="amount (AITBC)")
    def amount_shown(self, payment):
        return money(payment.amount)

    @admin.display(ordering="amount_paid", description="paid out")
    def paid(self, payment):
        return money(payment.amount_paid)

    @admin.display(ordering="amount_refunded", description="refunded")
    def refunded(self, payment):
        return money(payment.amount_refunded)


@admin.register(ExchangePayment)
class ExchangePaymentAdmin(MoneyAdmin):
    """Bitcoin purchases of AITBC. Staff confirm a deposit they have seen arrive; the mint is audited by name."""

    list_display = ("id", "user", "aitbc_amount", "btc_amount", "status", "created_at", "expires_at", "confirmed_by")
    list_filter = ("status", ("created_at", admin.DateFieldListFilter), ("confirmed_at", admin.DateFieldListFilter))
    search_fields = ("=id", "deposit_address", "txid", "user__username", "wallet__address")
    list_select_related = ("user", "confirmed_by")
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    actions = ["confirm"]

    @admin.action(description="Confirm selected (mint credits)", permissions=["move_money"])
    @transaction.atomic
    def confirm(self, request, queryset):
        confirmed, repeated, refused = [], 0, []
        for payment in queryset:
            try:
                with transaction.atomic():
                    confirmation = exchange.exchange_payment_confirm(payment_id=payment.pk, actor=request.user)
            except ServiceError as exc:
                refused.append(f"{payment.pk}: {exc.detail}")
                continue
            if confirmation.minted_now:
                confirmed.append(payment)
            else:
                repeated += 1
        if confirmed:
            total = sum((payment.aitbc_amount for payment in confirmed), Decimal(0))
            staff_action_record(
                actor=request.user,
                action="confirm exchange payments",
                targets=confirmed,
                summary=f"{len(confirmed)} BTC deposit(s) confirmed, {total} AITBC minted: "
                + ", ".join(f"{payment.pk} ({payment.user})" for payment in confirmed)
                + ".",
                amount=total,
            )
        self.message_user(request, f"Confirmed {len(confirmed)} payment(s) and minted their credits.", messages.SUCCESS)
        if repeated:
            self.message_user(request, f"{repeated} payment(s) were already confirmed.", messages.INFO)
        if refused:
            self.message_user(request, "Not confirmed: " + "; ".join(refused), messages.WARNING)
