"""Staff views of the ledger. Nothing here edits or deletes a ledger row: credits are actions that
post new, audited transactions through the services (a job's refund is an action on the job)."""

import secrets
from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.template.response import TemplateResponse

from core.admin_bases import ReadOnlyAdmin, ReadOnlyInline
from core.errors import ServiceError
from payments import exchange
from payments.models import (
    AMOUNT,
    ExchangePayment,
    LedgerEntry,
    LedgerTransaction,
    Payment,
    Wallet,
    WalletKind,
)
from payments.services import treasury_mint


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


@admin.register(Wallet)
class WalletAdmin(MoneyAdmin):
    list_display = ("address", "kind", "user", "balance", "created_at")
    list_filter = ("kind",)
    search_fields = ("address", "user__username")
    list_select_related = ("user",)
    ordering = ("id",)
    actions = ["credit"]

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
                "wallets": queryset,
                "action_checkbox_name": ACTION_CHECKBOX_NAME,
            },
        )

    def _credit(self, request, queryset, *, amount: Decimal, reason: str, token: str) -> None:
        credited = 0
        for wallet in queryset.filter(kind=WalletKind.USER):
            treasury_mint(
                wallet=wallet,
                amount=amount,
                actor=request.user,
                memo=reason,
                business_key=f"credit:{token}:{wallet.address}",
            )
            credited += 1
        self.message_user(request, f"Credited {amount} AITBC to {credited} wallet(s).", messages.SUCCESS)
        skipped = queryset.exclude(kind=WalletKind.USER).count()
        if skipped:
            self.message_user(request, f"{skipped} system or escrow wallet(s) skipped.", messages.WARNING)


class LedgerEntryInline(ReadOnlyInline):
    model = LedgerEntry
    fields = ("wallet", "amount")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("wallet")


@admin.register(LedgerTransaction)
class LedgerTransactionAdmin(MoneyAdmin):
    list_display = ("id", "created_at", "kind", "business_key", "actor", "memo")
    list_filter = ("kind", ("created_at", admin.DateFieldListFilter))
    search_fields = ("business_key", "memo", "actor__username", "entries__wallet__address")
    list_select_related = ("actor",)
    date_hierarchy = "created_at"
    ordering = ("-id",)
    inlines = [LedgerEntryInline]
    fields = ("business_key", "kind", "job", "memo", "actor", "created_at")
    readonly_fields = fields


@admin.register(Payment)
class PaymentAdmin(MoneyAdmin):
    list_display = (
        "payment_id",
        "job",
        "payer",
        "amount",
        "status",
        "amount_paid",
        "amount_refunded",
        "created_at",
        "settled_at",
    )
    list_filter = ("status", ("created_at", admin.DateFieldListFilter))
    search_fields = ("payment_id", "=job__id", "payer__address", "payer__user__username")
    list_select_related = ("payer", "job")
    date_hierarchy = "created_at"
    ordering = ("-created_at",)


@admin.register(ExchangePayment)
class ExchangePaymentAdmin(MoneyAdmin):
    """Bitcoin purchases of AITBC. Staff confirm a deposit they have seen arrive; the mint is audited by name."""

    list_display = (
        "id",
        "user",
        "aitbc_amount",
        "btc_amount",
        "deposit_address",
        "status",
        "created_at",
        "expires_at",
        "confirmed_at",
        "confirmed_by",
    )
    list_filter = ("status", ("created_at", admin.DateFieldListFilter), ("confirmed_at", admin.DateFieldListFilter))
    search_fields = ("=id", "deposit_address", "txid", "user__username", "wallet__address")
    list_select_related = ("user", "confirmed_by")
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    actions = ["confirm"]

    @admin.action(description="Confirm selected (mint credits)", permissions=["move_money"])
    def confirm(self, request, queryset):
        confirmed, repeated, refused = 0, 0, []
        for payment in queryset:
            try:
                confirmation = exchange.exchange_payment_confirm(payment_id=payment.pk, actor=request.user)
            except ServiceError as exc:
                refused.append(f"{payment.pk}: {exc.detail}")
                continue
            if confirmation.minted_now:
                confirmed += 1
            else:
                repeated += 1
        self.message_user(request, f"Confirmed {confirmed} payment(s) and minted their credits.", messages.SUCCESS)
        if repeated:
            self.message_user(request, f"{repeated} payment(s) were already confirmed.", messages.INFO)
        if refused:
            self.message_user(request, "Not confirmed: " + "; ".join(refused), messages.WARNING)
