"""``{{ amount|credits }}``: an amount of AITBC as people read it. The ledger keeps up to 18
decimal places; a page shows the digits that matter, with thousands grouped:
``0.000304``, ``1,250.5``, ``100``; ``—`` for no amount."""

from decimal import Decimal, InvalidOperation

from django import template

register = template.Library()


@register.filter
def credits(amount) -> str:
    if amount is None or amount == "":
        return "—"
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        return str(amount)
    if not value.is_finite():
        return str(amount)
    text = f"{value:,f}"  # fixed point, never an exponent
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text
