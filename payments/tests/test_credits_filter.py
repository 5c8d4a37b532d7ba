from decimal import Decimal

import pytest
from django.template import Context, Template

from payments.templatetags.credits import credits


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        (Decimal("0.000304000000000000"), "0.000304"),
        (Decimal("1234.50000000"), "1,234.5"),
        (Decimal("100.00000000"), "100"),
        (Decimal("1E+2"), "100"),
        (Decimal("0E-18"), "0"),
        (Decimal("-0.00000000"), "0"),
        (Decimal("-2.50"), "-2.5"),
        ("0.10", "0.1"),
        (None, "—"),
    ],
)
def test_credits_are_shown_trimmed_and_grouped(amount, shown):
    assert credits(amount) == shown


def test_credits_is_a_template_filter():
    template = Template("{% load credits %}{{ amount|credits }} AITBC")
    assert template.render(Context({"amount": Decimal("0.000304000000000000")})) == "0.000304 AITBC"
