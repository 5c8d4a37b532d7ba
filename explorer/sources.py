"""What blocks seal. Each leaf source lists its unsealed items and re-reads sealed ones.

Receipts live here; ledger transactions live in ``payments``, read through its selectors
(imported lazily, so that sealing works before and without the ledger):

- ``ledger_transactions_unsealed(*, after_id: int, limit: int) -> list``: transactions with
  ``pk > after_id``, ascending by integer ``pk`` (any already sealed are skipped here);
- ``transaction_document(tx) -> dict``: the transaction as JSON-safe data;
- optionally ``ledger_transactions_by_ids(ids: list[int]) -> list``: those transactions, to
  re-check and show sealed ones (without it, their id range is read through the first).

Items committed late (a transaction that took its id or timestamp before a block was
sealed, and committed after) are still found: each source looks back a configurable
window behind the newest item it has sealed.
"""

import importlib
import json
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property

from django.conf import settings
from django.db.models import Exists, OuterRef, Subquery

from explorer import merkle, signing
from explorer.models import BlockLeaf, LeafKind, Receipt


class SourceUnavailable(Exception):
    """The items of a kind cannot be read (the app that holds them does not offer it yet)."""


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


def payments_function(name: str):
    """``payments.selectors.<name>``, or None while the ledger does not offer it."""
    try:
        module = importlib.import_module("payments.selectors")
    except ImportError:
        return None
    return getattr(module, name, None)


class LedgerTransactionSource:
    kind = LeafKind.TRANSACTION
    page_size = 1000

    def pending(self, *, limit: int, full_scan: bool = False) -> list[Leaf]:
        unsealed = payments_function("ledger_transactions_unsealed")
        document_of = payments_function("transaction_document")
        if unsealed is None or document_of is None:
            return []
        last = _last_sealed_ref(self.kind)
        after_id = 0 if full_scan or last is None else max(0, int(last) - settings.BLOCK_LEDGER_LOOKBACK_ROWS)
        found: list[Leaf] = []
        size = max(limit, self.page_size)
        while len(found) < limit:
            page = unsealed(after_id=after_id, limit=size)
            if not page:
                break
            refs = [str(tx.pk) for tx in page]
            sealed = set(BlockLeaf.objects.filter(kind=self.kind, ref__in=refs).values_list("ref", flat=True))
            for tx, ref in zip(page, refs, strict=True):
                if ref not in sealed:
                    found.append(Leaf(self.kind, ref, signing.canonical_json(document_of(tx))))
                    if len(found) == limit:
                        break
            after_id = page[-1].pk
            if len(page) < size:
                break
        return found

    def _transactions(self, refs: list[str]) -> dict[str, object]:
        ids = sorted(int(ref) for ref in refs)
        by_ids = payments_function("ledger_transactions_by_ids")
        unsealed = payments_function("ledger_transactions_unsealed")
        if payments_function("transaction_document") is None or (by_ids is None and unsealed is None):
            raise SourceUnavailable("payments.selectors does not offer the ledger's transactions")
        # Without a lookup by ids, read their range in id order: one block's ids lie close together.
        found = by_ids(ids) if by_ids else unsealed(after_id=ids[0] - 1, limit=ids[-1] - ids[0] + 1)
        wanted = set(ids)
        return {str(tx.pk): tx for tx in found if tx.pk in wanted}

    def current(self, refs: list[str]) -> dict[str, bytes]:
        document_of = payments_function("transaction_document")
        return {ref: signing.canonical_json(document_of(tx)) for ref, tx in self._transactions(refs).items()}

    def documents(self, refs: list[str]) -> dict[str, dict]:
        try:
            return {ref: json.loads(data) for ref, data in self.current(refs).items()}
        except SourceUnavailable:
            return {}


# The order in which a block takes its leaves: receipts first, then ledger transactions.
LEAF_SOURCES = (ReceiptSource(), LedgerTransactionSource())


def leaf_source(kind: str):
    return next(source for source in LEAF_SOURCES if source.kind == kind)
