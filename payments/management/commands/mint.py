from decimal import Decimal, InvalidOperation

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from core.crypto.addresses import is_wallet_address
from core.errors import ServiceError
from payments.models import AMOUNT, WalletKind
from payments.selectors import wallet_by_address
from payments.services import credits, treasury_mint, wallet_open


class Command(BaseCommand):
    help = "Mint AITBC credits from the treasury into a user's wallet (opened if needed) or an ait1… address."

    def add_arguments(self, parser):
        parser.add_argument("--to", required=True, help="a username, or a wallet address (ait1…)")
        parser.add_argument("--amount", required=True, help="credits to mint, e.g. 25 or 0.5")
        parser.add_argument("--memo", default="Minted from the command line", help="why, kept on the transaction")

    def handle(self, *args, to, amount, memo, **options):
        amount = _positive_amount(amount)
        wallet = _wallet_for(to)
        try:
            posted = treasury_mint(wallet=wallet, amount=amount, memo=memo)
        except ServiceError as exc:
            raise CommandError(exc.detail) from None
        wallet.refresh_from_db(fields=["balance"])
        self.stdout.write(f"Minted {amount} AITBC to {wallet.address}: transaction {posted.pk} ({posted.business_key})")
        self.stdout.write(f"New balance: {wallet.balance}")


def _positive_amount(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise CommandError(f"--amount must be a number, not {text!r}.") from None
    if not value.is_finite() or value <= 0:
        raise CommandError(f"--amount must be a positive number, not {text!r}.")
    if value >= Decimal(10) ** (AMOUNT["max_digits"] - AMOUNT["decimal_places"]):
        raise CommandError(f"--amount is too large: {text!r}.")
    if credits(value) != value:
        raise CommandError(f"--amount has at most 8 decimal places, not {text!r}.")
    return value


def _wallet_for(target: str):
    if target.lower().startswith("ait1"):
        if not is_wallet_address(target):
            raise CommandError(f"{target!r} is not a valid ait1… address (bad checksum or length).")
        wallet = wallet_by_address(target)
        if wallet is None:
            raise CommandError(f"No wallet has the address {target}.")
        if wallet.kind != WalletKind.USER:
            raise CommandError(f"{target} is a {wallet.get_kind_display()} wallet: mint only into user wallets.")
        return wallet
    user = get_user_model().objects.filter(username=target).first()
    if user is None:
        raise CommandError(f"No user named {target!r}.")
    return wallet_open(user=user)
