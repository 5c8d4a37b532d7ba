from decimal import Decimal

from django import forms

from payments.exchange import btc_quote


class TopUpForm(forms.Form):
    """Buy AITBC with Bitcoin: the BTC amount is quoted from the configured rate."""

    aitbc_amount = forms.DecimalField(
        label="AITBC to buy", min_value=Decimal("0.00000001"), max_digits=18, decimal_places=8
    )

    def btc_amount(self) -> Decimal:
        return btc_quote(self.cleaned_data["aitbc_amount"])
