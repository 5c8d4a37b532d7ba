"""What blocks seal: receipts and ledger transactions. Each leaf source reads its items' sealed
bytes by reference, for sealing and for re-verifying the chain.

Receipts live in ``jobs``, sealed as stored; ledger transactions live in ``payments`` and are read
through its selectors, sealed as the canonical JSON of ``transaction_document``. What waits for a block is
listed by ``PendingLeaf`` rows, which the database writes with each item.
"""

import json
from dataclasses import dataclass
from functools import cached_property

from core.crypto import merkle, signing
from explorer.models import LeafKind
from jobs.models import Receipt
from payments.selectors import ledger_transactions, transaction_documents


@dataclass(frozen=True)
class Leaf:
    kind: str
    ref: str
    data: bytes

    @cached_property
    def hash(self) -> bytes:
        return merkle.leaf_hash(self.data)


class ReceiptSource:
    kind = LeafKind.RECEIPT

    def current(self, refs: list[str]) -> dict[str, bytes]:
        """What each receipt seals as: its stored signed JSON, byte for byte."""
        rows = Receipt.objects.filter(receipt_id__in=refs).values_list("receipt_id", "signed_json")
        return {receipt_id: signed_json.encode() for receipt_id, signed_json in rows}

    def documents(self, refs: list[str]) -> dict[str, dict]:
        """What the public explorer shows of each receipt (``Receipt.public_document``)."""
        receipts = Receipt.objects.filter(receipt_id__in=refs).prefetch_related("attestations")
        return {receipt.pk: receipt.public_document() for receipt in receipts}


class LedgerTransactionSource:
    kind = LeafKind.TRANSACTION
    # The ledger is public: its documents are shown as sealed.

    def current(self, refs: list[str]) -> dict[str, bytes]:
        """What each transaction seals as: the canonical JSON of its document."""
        documents = transaction_documents(ledger_transactions(ids=[int(ref) for ref in refs]))
        return {str(pk): signing.canonical_json(document) for pk, document in documents}

    def documents(self, refs: list[str]) -> dict[str, dict]:
        return {ref: json.loads(data) for ref, data in self.current(refs).items()}


LEAF_SOURCES = (ReceiptSource(), LedgerTransactionSource())


def leaf_source(kind: str):
    return next(source for source in LEAF_SOURCES if source.kind == kind)
