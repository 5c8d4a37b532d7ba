from datetime import UTC

from django.db import models
from django.db.models import Q

GENESIS_PREV_HASH = "0" * 64


class Block(models.Model):
    """A sealed block: a Merkle root over receipts and ledger transactions, chained by ``prev_hash``.

    ``hash`` is the SHA-256 of the header's canonical JSON (height, prev_hash, merkle_root,
    timestamp, tx_count, proposer); ``signature`` is the coordinator's Ed25519 signature of
    the same bytes.
    """

    height = models.PositiveBigIntegerField(primary_key=True)
    hash = models.CharField(max_length=64, unique=True)
    prev_hash = models.CharField(max_length=64)
    merkle_root = models.CharField(max_length=64)
    timestamp = models.DateTimeField()
    tx_count = models.PositiveIntegerField()
    proposer = models.CharField(max_length=64, help_text="The sealing coordinator key's id")
    signature = models.CharField(max_length=128)

    class Meta:
        ordering = ["-height"]
        constraints = [
            models.CheckConstraint(
                condition=Q(height=0) | ~Q(prev_hash=GENESIS_PREV_HASH), name="block_links_to_parent"
            ),
            models.CheckConstraint(condition=~Q(height=0) | Q(tx_count=0), name="block_genesis_is_empty"),
        ]

    def __str__(self) -> str:
        return f"block {self.height}"

    def header(self) -> dict:
        """What the block's hash and signature cover."""
        return {
            "height": self.height,
            "prev_hash": self.prev_hash,
            "merkle_root": self.merkle_root,
            "timestamp": self.timestamp.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "tx_count": self.tx_count,
            "proposer": self.proposer,
        }


class LeafKind(models.TextChoices):
    RECEIPT = "receipt", "Receipt"
    TRANSACTION = "transaction", "Ledger transaction"


class BlockLeaf(models.Model):
    """One sealed item of a block, at its position in the block's Merkle tree.

    Unique on ``(kind, ref)``: whatever races, nothing is sealed twice.
    """

    block = models.ForeignKey(Block, on_delete=models.PROTECT, related_name="leaves")
    position = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=LeafKind.choices)
    ref = models.CharField(max_length=64, help_text="The receipt id, or the ledger transaction's primary key")
    leaf_hash = models.CharField(max_length=64, db_index=True)

    class Meta:
        ordering = ["block", "position"]
        verbose_name_plural = "block leaves"
        constraints = [
            models.UniqueConstraint(fields=["kind", "ref"], name="block_leaf_sealed_once"),
            models.UniqueConstraint(fields=["block", "position"], name="block_leaf_position_unique"),
            models.CheckConstraint(condition=Q(kind__in=LeafKind.values), name="block_leaf_kind_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.ref} in block {self.block_id}"


class PendingLeaf(models.Model):
    """An item no block holds yet: a receipt or a ledger transaction, in the order they were stored.

    Database triggers write one in the transaction that stores the item, and sealing deletes it in
    the transaction that seals the item: what waits is exactly what is unsealed, however late its
    transaction committed, and sealing never reads an item it sealed before.
    """

    id = models.BigAutoField(primary_key=True)
    kind = models.CharField(max_length=16, choices=LeafKind.choices)
    ref = models.CharField(max_length=64)

    class Meta:
        ordering = ["id"]
        constraints = [models.CheckConstraint(condition=Q(kind__in=LeafKind.values), name="pending_leaf_kind_valid")]

    def __str__(self) -> str:
        return f"{self.kind} {self.ref} waiting for a block"
