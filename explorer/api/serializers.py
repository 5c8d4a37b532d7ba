from drf_spectacular.utils import OpenApiExample, extend_schema_serializer
from rest_framework import serializers

from core.api.formats import iso_datetime
from jobs.api.serializers import ReceiptDocumentSerializer, ReceiptOpeningSerializer


class ReceiptOpeningViewSerializer(ReceiptOpeningSerializer):
    receipt_id = serializers.CharField()


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "A receipt, its opening and the job's payload and result",
            request_only=True,
            value={
                "receipt": {"version": "1.0", "receipt_id": "rcpt_…", "signature": {"alg": "Ed25519"}},
                "opening": {"input_salt": "9c0f…", "output_salt": "41d2…"},
                "payload": {"type": "inference", "prompt": "hi", "model": "llama3.2"},
                "result": {"output": "hello"},
            },
        )
    ]
)
class ReceiptCheckSerializer(serializers.Serializer):
    """A receipt with what to check it against: each of payload and result given is checked
    against the receipt's commitment (with the opening's salts; a receipt signed before
    commitments needs none)."""

    receipt = ReceiptDocumentSerializer()
    opening = ReceiptOpeningSerializer(required=False)
    payload = serializers.JSONField(required=False, help_text="The job's payload, as GET /v1/jobs/{id} gives it")
    result = serializers.JSONField(required=False, help_text="The job's result, as GET /v1/jobs/{id}/result gives it")


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Attestation",
            request_only=True,
            value={"alg": "Ed25519", "key_id": "m1n3r-public-key-b64url", "sig": "signature-b64url"},
        )
    ]
)
class ReceiptAttestationRequestSerializer(serializers.Serializer):
    """The provider miner's Ed25519 signature of the receipt's signed payload."""

    alg = serializers.CharField(max_length=16, default="Ed25519")
    key_id = serializers.CharField(max_length=88, help_text="The miner's registered public key (b64url or hex)")
    sig = serializers.CharField(max_length=128, help_text="URL-safe base64 signature, no padding")


class ReceiptVerificationSerializer(serializers.Serializer):
    valid = serializers.BooleanField()
    reason = serializers.CharField(required=False, help_text="Why the receipt is not valid")


class ReceiptPublicKeySerializer(serializers.Serializer):
    alg = serializers.CharField(help_text="Ed25519")
    key_id = serializers.CharField(help_text="URL-safe base64 public key, no padding: receipts' signature.key_id")
    public_key = serializers.CharField(help_text="The same key, hex")


class ProofSiblingSerializer(serializers.Serializer):
    position = serializers.ChoiceField(choices=["left", "right"], help_text="Which side the sibling is on")
    hash = serializers.CharField(help_text="hex")


class MerkleProofSerializer(serializers.Serializer):
    """An RFC 6962 inclusion proof: fold ``siblings`` from the leaf up to reach ``merkle_root``."""

    leaf_hash = serializers.CharField(
        help_text="hex SHA-256(0x00 ‖ canonical JSON of the document as sealed; a receipt without attestations)"
    )
    siblings = ProofSiblingSerializer(many=True)
    merkle_root = serializers.CharField()
    block_height = serializers.IntegerField()
    block_hash = serializers.CharField()


class TimeText(serializers.CharField):
    """A time as ISO 8601 text (UTC written ``Z``), documented as the plain string the explorer has
    always called it."""

    def to_representation(self, value):
        return iso_datetime(value)


class ExplorerBlockSerializer(serializers.Serializer):
    height = serializers.IntegerField()
    hash = serializers.CharField()
    timestamp = TimeText()
    txCount = serializers.IntegerField(source="tx_count")  # the explorer's spelling
    proposer = serializers.CharField(help_text="The sealing coordinator key's id")
    merkle_root = serializers.CharField()
    prev_hash = serializers.CharField()


class ExplorerBlockLeafSerializer(serializers.Serializer):
    position = serializers.IntegerField()
    kind = serializers.ChoiceField(choices=["receipt", "transaction"])
    ref = serializers.CharField(help_text="Receipt id or ledger transaction id")
    hash = serializers.CharField(source="leaf_hash")


# The view reads the block's ``sealed_leaves``.
class ExplorerBlockDetailSerializer(ExplorerBlockSerializer):
    signature = serializers.CharField(help_text="Ed25519 signature of the header's canonical JSON, b64url")
    header = serializers.DictField(help_text="What hash and signature cover")
    transactions = ExplorerBlockLeafSerializer(many=True, source="sealed_leaves")


# The view gives each leaf its ``document`` (``explorer.selectors.with_documents``).
class ExplorerTransactionSerializer(serializers.Serializer):
    """A sealed item: a receipt or a ledger transaction."""

    hash = serializers.CharField(source="leaf_hash", help_text="The leaf hash (hex)")
    kind = serializers.ChoiceField(choices=["receipt", "transaction"])
    ref = serializers.CharField()
    block_height = serializers.IntegerField(source="block_id")
    position = serializers.IntegerField()
    timestamp = TimeText(source="block.timestamp", help_text="The block's time")
    document = serializers.JSONField(allow_null=True, help_text="The receipt or transaction document")


# The view gives each receipt its ``public`` document (``explorer.selectors.with_public_documents``).
class ExplorerReceiptSerializer(serializers.Serializer):
    receiptId = serializers.CharField(source="receipt_id")  # the explorer's spelling
    jobId = serializers.CharField(source="public.job_id")
    miner = serializers.CharField(source="public.provider")
    issuedAt = TimeText(source="created_at")
    status = serializers.CharField(source="public.status")
    payload = ReceiptDocumentSerializer(source="public")
    blockHeight = serializers.IntegerField(source="block_height", allow_null=True, help_text="null until sealed")


class ExplorerAddressSerializer(serializers.Serializer):
    address = serializers.CharField(help_text="ait1… bech32 wallet address")
    balance = serializers.CharField(allow_null=True, help_text="Decimal as a string")


class ExplorerAddressDetailSerializer(ExplorerAddressSerializer):
    entries = serializers.ListField(child=serializers.DictField(), help_text="Ledger entries, newest first")
    next_offset = serializers.IntegerField(allow_null=True)


class NetworkStatsSerializer(serializers.Serializer):
    jobs = serializers.DictField(child=serializers.IntegerField(), help_text="Jobs by status")
    jobs_total = serializers.IntegerField()
    miners_online = serializers.IntegerField()
    miners = serializers.DictField(child=serializers.IntegerField(), help_text="Miners by status")
    receipts = serializers.IntegerField()
    blocks = serializers.IntegerField()
    height = serializers.IntegerField(allow_null=True)
    transactions = serializers.IntegerField(help_text="Receipts and ledger transactions sealed")
    last_block_time = serializers.CharField(allow_null=True)
