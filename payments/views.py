"""The wallet's page: balance, ledger entries and Bitcoin top-ups."""

from django.contrib import messages
from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.paginator import Paginator
from django.shortcuts import redirect
from django.views.generic import FormView

from core.errors import ServiceError
from payments.exchange import exchange_payment_create, exchange_rates
from payments.forms import TopUpForm
from payments.selectors import exchange_payments_of, wallet_entries, wallet_of

PAGE_SIZE = 20


class WalletView(LoginRequiredMixin, FormView):
    template_name = "payments/wallet.html"
    form_class = TopUpForm

    def get_context_data(self, **kwargs):
        wallet = wallet_of(user=self.request.user)
        return {
            **super().get_context_data(**kwargs),
            "wallet": wallet,
            "entries": Paginator(wallet_entries(wallet), PAGE_SIZE).get_page(self.request.GET.get("page")),
            "top_ups": exchange_payments_of(user=self.request.user)[:PAGE_SIZE],
            "rates": exchange_rates(),
        }

    def form_valid(self, form):
        try:
            payment = exchange_payment_create(
                user=self.request.user, aitbc_amount=form.cleaned_data["aitbc_amount"], btc_amount=form.btc_amount()
            )
        except ServiceError as error:
            form.add_error(None, error.detail)
            return self.form_invalid(form)
        messages.success(
            self.request, f"Send {payment.btc_amount} BTC to {payment.deposit_address} before {payment.expires_at:%c}."
        )
        return redirect("payments:wallet")
