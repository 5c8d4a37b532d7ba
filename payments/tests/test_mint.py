from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from accounts.services import user_get_or_create
from core.crypto.addresses import wallet_address
from payments.models import LedgerTransaction, TransactionKind, Wallet, WalletKind
from payments.services import system_wallet
from tests.factories import WalletFactory

pytestmark = pytest.mark.django_db


def mint(*args) -> str:
    out = StringIO()
    call_command("mint", *args, stdout=out)
    return out.getvalue()


def test_minting_to_a_username_opens_its_wallet_and_prints_the_transaction_and_balance():
    user = user_get_or_create(username="carol")

    output = mint("--to", "carol", "--amount", "25", "--memo", "Hackathon prize")

    wallet = Wallet.objects.get(user=user)
    assert wallet.balance == Decimal(125)  # welcome credits + the mint
    minted = LedgerTransaction.objects.get(kind=TransactionKind.MINT)
    assert (minted.memo, minted.actor) == ("Hackathon prize", None)
    assert f"transaction {minted.pk}" in output
    assert "New balance: 125.00000000" in output


def test_minting_to_an_address_credits_that_wallet():
    wallet = WalletFactory(user__username="dave")

    output = mint("--to", wallet.address, "--amount", "0.5")

    wallet.refresh_from_db()
    assert wallet.balance == Decimal("100.5")
    assert wallet.address in output


@pytest.mark.parametrize(
    "target, message",
    [
        ("nobody", "No user named 'nobody'"),
        (wallet_address(b"\x01" * 32), "No wallet has the address"),
        ("ait1notanaddress", "is not a valid ait1… address"),
    ],
)
def test_an_unknown_recipient_is_a_clear_error(target, message):
    with pytest.raises(CommandError, match=message):
        mint("--to", target, "--amount", "1")
    assert not LedgerTransaction.objects.filter(kind=TransactionKind.MINT).exists()


def test_minting_into_a_system_wallet_is_refused():
    treasury = system_wallet(WalletKind.TREASURY)

    with pytest.raises(CommandError, match="mint only into user wallets"):
        mint("--to", treasury.address, "--amount", "1")


@pytest.mark.parametrize("amount", ["0", "-3", "abc", "NaN", "Infinity", "1.000000001", "1e20"])
def test_a_non_positive_or_malformed_amount_is_a_clear_error(amount):
    WalletFactory(user__username="erin")

    with pytest.raises(CommandError, match="--amount"):
        mint("--to", "erin", "--amount", amount)
    assert not LedgerTransaction.objects.filter(kind=TransactionKind.MINT).exists()
