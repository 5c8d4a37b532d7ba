"""What blocks seal. Each leaf source lists its unsealed items and re-reads sealed ones.

Receipts live here; ledger transactions live in ``payments`` and are read through its
selectors, sealed as the canonical JSON of ``transaction_document``.

Items committed late (a transaction that took its id or timestamp before a block was
sealed, and committed after) are still found: each source looks back a configurable
window behind the newest item it has sealed.
"""

import json
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property

from django.conf import settings
from django.db.models import Exists, OuterRef, Subquery

from explorer import merkle, signing
from explorer.models import BlockLeaf, LeafKind, Receipt
from payments.selectors import ledger_transactions_by_ids, ledger_transactions_unsealed, transaction_document


@dataclass(frozen=True)
class Leaf:
    kind: str
    ref: str
    data: bytes

    @cached_property
    def hash(self) -> bytes:
        return merkle.leaf_hash(self.data)


def _last_sealed_ref(kind: str) -> str | None:
    return BlockLeaf.objects.filter(kind=kind).order_by("-pk").values_list("ref", flat=True).first()


class ReceiptSource:
    kind = LeafKind.RECEIPT

    def pending(self, *, limit: int, full_scan: bool = False) -> list[Leaf]:
        """Unsealed receipts, oldest first: the stored signed JSON is the leaf's data, byte for byte."""
        receipts = Receipt.objects.filter(~Exists(BlockLeaf.objects.filter(kind=self.kind, ref=OuterRef("receipt_id"))))
        if not full_scan:
            newest_sealed = Receipt.objects.filter(
                receipt_id=Subquery(BlockLeaf.objects.filter(kind=self.kind).order_by("-pk").values("ref")[:1])
            ).values_list("created_at", flat=True)
            watermark = newest_sealed.first()
            if watermark is not None:
                receipts = receipts.filter(
                    created_at__gte=watermark - timedelta(seconds=settings.BLOCK_SEAL_LOOKBACK_SECONDS)
                )
        rows = receipts.order_by("created_at", "receipt_id").values_list("receipt_id", "signed_json")[:limit]
        return [Leaf(self.kind, receipt_id, signed_json.encode()) for receipt_id, signed_json in rows]

    def current(self, refs: list[str]) -> dict[str, bytes]:
        rows = Receipt.objects.filter(receipt_id__in=refs).values_list("receipt_id", "signed_json")
        return {receipt_id: signed_json.encode() for receipt_id, signed_json in rows}

    def documents(self, refs: list[str]) -> dict[str, dict]:
        receipts = Receipt.objects.filter(receipt_id__in=refs).prefetch_related("attestations")
        return {receipt.pk: receipt.served_document() for receipt in receipts}


class LedgerTransactionSource:
    kind = LeafKind.TRANSACTION
    page_size = 1000

    def pending(self, *, limit: int, full_scan: bool = False) -> list[Leaf]:
        last = _last_sealed_ref(self.kind)
        after_id = 0 if full_scan or last is None else max(0, int(last) - settings.BLOCK_LEDGER_LOOKBACK_ROWS)
        found: list[Leaf] = []
        size = max(limit, self.page_size)
        while len(found) < limit:
            page = ledger_transactions_unsealed(after_id=after_id, limit=size)
            if not page:
                break
            refs = [str(tx.pk) for tx in page]
            sealed = set(BlockLeaf.objects.filter(kind=self.kind, ref__in=refs).values_list("ref", flat=True))
            for tx, ref in zip(page, refs, strict=True):
                if ref not in sealed:
                    found.append(Leaf(self.kind, ref, signing.canonical_json(transaction_document(tx))))
                    if len(found) == limit:
                        break
            after_id = page[-1].pk
            if len(page) < size:
                break
        return found

    def current(self, refs: list[str]) -> dict[str, bytes]:
        transactions = ledger_transactions_by_ids([int(ref) for ref in refs])
        return {str(tx.pk): signing.canonical_json(transaction_document(tx)) for tx in transactions}

    def documents(self, refs: list[str]) -> dict[str, dict]:
        return {ref: json.loads(data) for ref, data in self.current(refs).items()}


# The order in which a block takes its leaves: receipts first, then ledger transactions.
LEAF_SOURCES = (ReceiptSource(), LedgerTransactionSource())


def leaf_source(kind: str):
    return next(source for source in LEAF_SOURCES if source.kind == kind)
