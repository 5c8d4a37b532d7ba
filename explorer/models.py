import json
from datetime import UTC

from django.db import models
from django.db.models import Q

GENESIS_PREV_HASH = "0" * 64


class Receipt(models.Model):
    """A signed receipt for a completed job. The signed JSON is stored byte for byte.

    ``opening`` holds the salts of the receipt's input and output commitments
    (``{"input_salt", "output_salt"}``, hex): the job's client is given them, and whoever the
    client shows them to can check the receipt against the job's payload and result. Receipts
    signed before commitments have none.
    """

    receipt_id = models.CharField(max_length=64, primary_key=True)
    # Looked up through ``receipt_job_idx`` (job, created_at).
    job = models.ForeignKey("jobs.Job", on_delete=models.PROTECT, related_name="receipts", db_index=False)
    signed_json = models.TextField(editable=False)
    opening = models.JSONField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["job", "-created_at"], name="receipt_job_idx")]

    def __str__(self) -> str:
        return self.receipt_id

    @property
    def document(self) -> dict:
        return json.loads(self.signed_json)

    def served_document(self) -> dict:
        """The receipt as signed, with the attestations given since (prefetch ``attestations``)."""
        document = self.document
        attestations = [attestation.as_signature() for attestation in self.attestations.all()]
        if attestations:
            document["attestations"] = [*document.get("attestations", []), *attestations]
        return document

    def public_document(self) -> dict:
        """What the public explorer shows: ``served_document``, except that a receipt signed before
        input and output commitments is shown without its ``client`` (the client's username) and
        its plain ``metadata.input_sha256`` and ``output_sha256`` (which let anyone confirm a guessed
        input or output), named in its ``withheld``. Its signature then verifies only over the whole
        receipt, which its owner holds: sealed receipts never change."""
        document = self.served_document()
        metadata = document.get("metadata")
        if not isinstance(metadata, dict) or "commitment" in metadata:
            return document
        withheld = ["client"] if document.pop("client", None) is not None else []
        withheld += [f"metadata.{name}" for name in ("input_sha256", "output_sha256") if metadata.pop(name, None)]
        if withheld:
            document["withheld"] = withheld
        return document


class ReceiptAttestation(models.Model):
    """A co-signature of a receipt's signed payload, given after signing (the receipt itself never changes)."""

    receipt = models.ForeignKey(Receipt, on_delete=models.PROTECT, related_name="attestations")
    alg = models.CharField(max_length=16, default="Ed25519")
    key_id = models.CharField(max_length=64, help_text="URL-safe base64 public key, no padding")
    sig = models.CharField(max_length=128, help_text="URL-safe base64 signature, no padding")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["receipt", "key_id"], name="receipt_attestation_key_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.receipt_id} attested by {self.key_id}"

    def as_signature(self) -> dict:
        return {"alg": self.alg, "key_id": self.key_id, "sig": self.sig}


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
