from django.db.models import Prefetch, QuerySet

from payments.models import LedgerEntry, LedgerTransaction, Payment, Wallet


def wallet_of(*, user) -> Wallet | None:
    return Wallet.objects.filter(user=user).first()


def wallet_by_address(address: str) -> Wallet | None:
    return Wallet.objects.filter(address=address.strip().lower()).first() if isinstance(address, str) else None


def wallet_entries(wallet: Wallet) -> QuerySet[LedgerEntry]:
    """The wallet's ledger entries, newest first, each with its transaction."""
    return LedgerEntry.objects.filter(wallet=wallet).select_related("transaction").order_by("-id")


def payment_of_job(*, job_id) -> Payment | None:
    return Payment.objects.select_related("payer", "escrow").filter(job_id=job_id).first()


def ledger_transactions_unsealed(*, after_id: int, limit: int) -> list[LedgerTransaction]:
    """Transactions after ``after_id`` in id order, with their entries (for block sealing)."""
    entries = Prefetch("entries", queryset=LedgerEntry.objects.select_related("wallet").order_by("id"))
    return list(LedgerTransaction.objects.filter(pk__gt=after_id).order_by("id").prefetch_related(entries)[:limit])


def transaction_document(tx: LedgerTransaction) -> dict:
    """A transaction as sealed into a block and shown by the explorer (JSON-safe, canonical)."""
    return {
        "id": tx.pk,
        "business_key": tx.business_key,
        "kind": tx.kind,
        "job_id": str(tx.job_id) if tx.job_id else None,
        "memo": tx.memo,
        "created_at": tx.created_at.isoformat(),
        "entries": [{"address": entry.wallet.address, "amount": str(entry.amount)} for entry in tx.entries.all()],
    }


def ledger_transactions_by_ids(ids: list[int]) -> list[LedgerTransaction]:
    """The transactions with these ids, in id order, with their entries (chain verification)."""
    entries = Prefetch("entries", queryset=LedgerEntry.objects.select_related("wallet").order_by("id"))
    return list(LedgerTransaction.objects.filter(pk__in=ids).order_by("id").prefetch_related(entries))


def wallets_list() -> QuerySet[Wallet]:
    """Every wallet, oldest first (the explorer's address list)."""
    return Wallet.objects.order_by("id")
