from decimal import Decimal

from drf_spectacular.utils import OpenApiExample, extend_schema_field, extend_schema_serializer
from rest_framework import serializers

from core.crypto import merkle, signing
from payments.models import AMOUNT, LedgerTransaction, Payment, PaymentStatus
from payments.selectors import transaction_document

SMALLEST_AMOUNT = Decimal("0.00000001")

PAYMENT_EXAMPLE = {
    "payment_id": "pay_3f9a1c0de4b5a6978877c1d2",
    "job_id": "6f1c2a34-5b6d-4e7f-8a9b-0c1d2e3f4a5b",
    "amount": "0.50000000",
    "currency": "AITBC",
    "payment_method": "aitbc_token",
    "status": "escrowed",
    "amount_paid": "0.00000000",
    "amount_refunded": "0.00000000",
    "payer_address": "ait1fz3kqy7c5dn4xj0l8v2w9m6e3t5r8a7u4s2p0h",
    "escrow_address": "ait1q8d6w2x4c7v9b3n5m0k2l4j6h8g0f3s5a7z9p",
    "created_at": "2026-03-05T12:00:00.000000Z",
    "updated_at": "2026-03-05T12:00:00.000000Z",
    "settled_at": None,
    "released_at": None,
    "refunded_at": None,
}


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Pay for a job",
            value={
                "job_id": "6f1c2a34-5b6d-4e7f-8a9b-0c1d2e3f4a5b",
                "amount": "0.5",
                "currency": "AITBC",
                "payment_method": "aitbc_token",
                "escrow_timeout_seconds": 3600,
            },
            request_only=True,
        )
    ]
)
def aitbc_currency(value: str) -> str:
    """The one currency jobs are paid in, whatever its spelling's case."""
    if value.upper() != "AITBC":
        raise serializers.ValidationError("Jobs are paid in AITBC.")
    return "AITBC"


class PaymentCreateSerializer(serializers.Serializer):
    job_id = serializers.UUIDField(help_text="A job of yours that has no payment yet.")
    amount = serializers.DecimalField(**AMOUNT, min_value=SMALLEST_AMOUNT, help_text="AITBC to hold in escrow")
    currency = serializers.CharField(max_length=16, default="AITBC", help_text="Jobs are paid in AITBC")
    payment_method = serializers.ChoiceField(choices=["aitbc_token"], default="aitbc_token")
    escrow_timeout_seconds = serializers.IntegerField(
        min_value=1,
        default=3600,
        help_text="Accepted for compatibility: the escrow lasts as long as the job, and is refunded "
        "when the job expires, fails or is cancelled.",
    )

    def validate_currency(self, value):
        return aitbc_currency(value)


@extend_schema_serializer(
    examples=[OpenApiExample("A held payment", value=PAYMENT_EXAMPLE, response_only=True)],
)
class PaymentViewSerializer(serializers.ModelSerializer):
    """PaymentView (also served as JobPaymentView): a job's payment and where its credits are."""

    job_id = serializers.UUIDField(source="job.pk", read_only=True)
    status = serializers.ChoiceField(choices=PaymentStatus.choices, read_only=True)
    payer_address = serializers.CharField(source="payer.address", read_only=True)
    escrow_address = serializers.CharField(source="escrow.address", read_only=True)
    released_at = serializers.SerializerMethodField(help_text="When the escrow paid out (status released)")
    refunded_at = serializers.SerializerMethodField(help_text="When the escrow went back (status refunded)")

    class Meta:
        model = Payment
        fields = [
            "payment_id",
            "job_id",
            "amount",
            "currency",
            "payment_method",
            "status",
            "amount_paid",
            "amount_refunded",
            "payer_address",
            "escrow_address",
            "created_at",
            "updated_at",
            "settled_at",
            "released_at",
            "refunded_at",
        ]
        read_only_fields = fields

    def _settled_if(self, payment: Payment, status: str) -> str | None:
        return self.fields["settled_at"].to_representation(payment.settled_at) if payment.status == status else None

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_released_at(self, payment: Payment) -> str | None:
        return self._settled_if(payment, PaymentStatus.RELEASED)

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_refunded_at(self, payment: Payment) -> str | None:
        return self._settled_if(payment, PaymentStatus.REFUNDED)


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Refund a failed job's payment",
            value={"reason": "The result never arrived."},
            request_only=True,
        )
    ]
)
class PaymentActionSerializer(serializers.Serializer):
    """The body of a release or refund, all optional. The original clients repeat the ids."""

    job_id = serializers.UUIDField(required=False, help_text="If sent, must be the payment's job")
    payment_id = serializers.CharField(required=False, max_length=40, help_text="If sent, must be the path's id")
    reason = serializers.CharField(required=False, allow_blank=True, max_length=300)

    def validate(self, attrs):
        payment = self.context["payment"]
        if "payment_id" in attrs and attrs["payment_id"] != payment.payment_id:
            raise serializers.ValidationError({"payment_id": "Does not match the payment in the path."})
        if "job_id" in attrs and attrs["job_id"] != payment.job.pk:
            raise serializers.ValidationError({"job_id": "Is not this payment's job."})
        return attrs


class PaymentLedgerEntrySerializer(serializers.Serializer):
    address = serializers.CharField()
    amount = serializers.CharField(help_text="Signed: credited (positive) or debited (negative)")


class PaymentLedgerTransactionSerializer(serializers.Serializer):
    """A ledger transaction of the payment's job, as the explorer seals it."""

    id = serializers.IntegerField()
    hash = serializers.SerializerMethodField(
        help_text="Hex leaf hash in the explorer's blocks: SHA-256(0x00 ‖ canonical JSON of the transaction)"
    )
    business_key = serializers.CharField(help_text="escrow:<job>, settle:<job> or refund:<job>")
    kind = serializers.CharField()
    amount = serializers.SerializerMethodField(help_text="Credits moved: the sum of the credited entries")
    memo = serializers.CharField(allow_blank=True)
    created_at = serializers.CharField()
    entries = PaymentLedgerEntrySerializer(many=True)

    def to_representation(self, tx: LedgerTransaction):
        # The fields read the transaction's sealed document, which the hash is taken over.
        return super().to_representation(transaction_document(tx))

    def get_hash(self, document: dict) -> str:
        return merkle.leaf_hash(signing.canonical_json(document)).hex()

    def get_amount(self, document: dict) -> str:
        credited = (Decimal(entry["amount"]) for entry in document["entries"])
        return f"{sum((amount for amount in credited if amount > 0), Decimal(0)):.8f}"


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "A settled payment",
            value={
                **PAYMENT_EXAMPLE,
                "status": "released",
                "amount_paid": "0.40000000",
                "amount_refunded": "0.10000000",
                "settled_at": "2026-03-05T12:00:09.000000Z",
                "released_at": "2026-03-05T12:00:09.000000Z",
                "transactions": [
                    {
                        "id": 41,
                        "hash": "9c0e6f1d2b3a4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5",
                        "business_key": "escrow:6f1c2a34-5b6d-4e7f-8a9b-0c1d2e3f4a5b",
                        "kind": "escrow",
                        "amount": "0.50000000",
                        "memo": "Escrow for job 6f1c2a34-5b6d-4e7f-8a9b-0c1d2e3f4a5b",
                        "created_at": "2026-03-05T12:00:00.000000+00:00",
                        "entries": [
                            {"address": PAYMENT_EXAMPLE["payer_address"], "amount": "-0.50000000"},
                            {"address": PAYMENT_EXAMPLE["escrow_address"], "amount": "0.50000000"},
                        ],
                    }
                ],
            },
            response_only=True,
        )
    ]
)
class PaymentReceiptSerializer(PaymentViewSerializer):
    """The payment with every ledger transaction of its job: the escrow hold, then its settlement or refund."""

    transactions = PaymentLedgerTransactionSerializer(many=True, read_only=True, source="job.transactions")

    class Meta(PaymentViewSerializer.Meta):
        fields = [*PaymentViewSerializer.Meta.fields, "transactions"]
        read_only_fields = fields
