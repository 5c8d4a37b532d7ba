from collections import defaultdict
from decimal import Decimal

from django.db.models import QuerySet, Sum

from payments.models import ExchangePayment, LedgerEntry, LedgerTransaction, Wallet, WalletKind


def wallet_of(*, user) -> Wallet | None:
    return Wallet.objects.filter(user=user).first()


def wallet_by_address(address: str) -> Wallet | None:
    return Wallet.objects.filter(address=address.strip().lower()).first() if isinstance(address, str) else None


def wallet_entries(wallet: Wallet | None) -> QuerySet[LedgerEntry]:
    """The wallet's ledger entries, newest first, each with its transaction (none without a wallet)."""
    if wallet is None:
        return LedgerEntry.objects.none()
    return LedgerEntry.objects.filter(wallet=wallet).select_related("transaction").order_by("-id")


def exchange_payments_of(*, user) -> QuerySet[ExchangePayment]:
    """The user's top-up requests, newest first."""
    return ExchangePayment.objects.filter(user=user).order_by("-created_at", "-id")


def ledger_transactions(*, ids: list[int]) -> QuerySet[LedgerTransaction]:
    """These transactions, in id order."""
    return LedgerTransaction.objects.filter(id__in=ids).order_by("id")


def transaction_document(tx: LedgerTransaction) -> dict:
    """A transaction as sealed into a block and shown by the explorer (JSON-safe, canonical)."""
    entries = [(entry.wallet.address, entry.amount) for entry in tx.entries.all()]
    return _document(tx.pk, tx.business_key, tx.kind, tx.job_id, tx.memo, tx.created_at, entries)


def _document(pk, business_key, kind, job_id, memo, created_at, entries) -> dict:
    return {
        "id": pk,
        "business_key": business_key,
        "kind": kind,
        "job_id": str(job_id) if job_id else None,
        "memo": memo,
        "created_at": created_at.isoformat(),
        "entries": [{"address": address, "amount": str(amount)} for address, amount in entries],
    }


def transaction_documents(transactions: QuerySet[LedgerTransaction]) -> list[tuple[int, dict]]:
    """``(id, transaction_document)`` of each of ``transactions``, in its order, read as plain rows
    in two queries: block sealing and chain verification read thousands at a time."""
    rows = list(transactions.values_list("id", "business_key", "kind", "job_id", "memo", "created_at"))
    entries = defaultdict(list)
    if rows:
        for transaction_id, address, amount in (
            LedgerEntry.objects.filter(transaction_id__in=[row[0] for row in rows])
            .order_by("id")
            .values_list("transaction_id", "wallet__address", "amount")
        ):
            entries[transaction_id].append((address, amount))
    return [(row[0], _document(*row, entries[row[0]])) for row in rows]


def wallets_list() -> QuerySet[Wallet]:
    """Every wallet, oldest first (the explorer's address list)."""
    return Wallet.objects.order_by("id")


def escrow_held() -> Decimal:
    """AITBC held in escrow now, for jobs not yet settled or refunded."""
    return Wallet.objects.filter(kind=WalletKind.ESCROW).aggregate(total=Sum("balance", default=Decimal(0)))["total"]
