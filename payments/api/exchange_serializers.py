from decimal import Decimal

from drf_spectacular.utils import OpenApiExample, extend_schema_field, extend_schema_serializer
from rest_framework import serializers

from payments.bitcoin import derivation_path
from payments.models import AMOUNT, ExchangePayment, ExchangePaymentStatus

SATOSHI = Decimal("0.00000001")
# Amounts arrive as JSON numbers from the original clients, at any precision; they are rounded to 8 places.
LARGEST_AMOUNT = Decimal(10) ** (AMOUNT["max_digits"] - AMOUNT["decimal_places"]) - 1
TXID_PATTERN = r"^[0-9a-fA-F]{64}$"

EXAMPLE_ADDRESS = "tb1q6rz28mcfaxtmd6v789l9rrlrusdprr9pqcpvkl"
EXAMPLE_TXID = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"
EXCHANGE_PAYMENT_EXAMPLE = {
    "payment_id": "exch_9f2c4e1a7b3d5f8e0a6c2d4b",
    "user_id": 7,
    "aitbc_amount": "1000.00000000",
    "btc_amount": "0.01000000",
    "rate": "100000.00000000",
    "payment_address": EXAMPLE_ADDRESS,
    "payment_uri": f"bitcoin:{EXAMPLE_ADDRESS}?amount=0.01000000",
    "derivation_path": "m/0/0",
    "status": "pending",
    "created_at": "2026-03-05T12:00:00.000000Z",
    "expires_at": "2026-03-05T13:00:00.000000Z",
    "confirmed_at": None,
    "tx_hash": None,
    "confirmations": 0,
}


def amount_field(**kwargs) -> serializers.DecimalField:
    return serializers.DecimalField(
        max_digits=None,
        decimal_places=None,
        min_value=SATOSHI,
        max_value=LARGEST_AMOUNT,
        coerce_to_string=False,
        **kwargs,
    )


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Buy 1000 AITBC",
            value={"user_id": 7, "aitbc_amount": 1000, "btc_amount": 0.01},
            request_only=True,
        )
    ]
)
class ExchangePaymentCreateSerializer(serializers.Serializer):
    user_id = serializers.IntegerField(min_value=1, help_text="Your own user id (an admin key may name anyone's).")
    aitbc_amount = amount_field(help_text="AITBC to buy; rounded to 8 decimal places.")
    btc_amount = amount_field(
        help_text="BTC you will send: aitbc_amount / BTC_TO_AITBC_RATE, to within one satoshi, else 400 "
        "AMOUNT_MISMATCH. Rounded to 8 decimal places (satoshis)."
    )


@extend_schema_serializer(
    examples=[OpenApiExample("A pending payment request", value=EXCHANGE_PAYMENT_EXAMPLE, response_only=True)]
)
class ExchangePaymentViewSerializer(serializers.ModelSerializer):
    """ExchangePaymentView: what to pay, where, until when, and whether it arrived."""

    payment_id = serializers.CharField(source="id", read_only=True)
    user_id = serializers.IntegerField(read_only=True)
    status = serializers.ChoiceField(
        choices=ExchangePaymentStatus.choices,
        read_only=True,
        help_text="pending until expires_at, then expired; confirmed once the deposit is confirmed.",
    )
    payment_address = serializers.CharField(
        source="deposit_address",
        read_only=True,
        help_text="Bech32 P2WPKH address of this request alone (tb1… on testnet).",
    )
    payment_uri = serializers.SerializerMethodField(help_text="BIP-21 URI for wallets and QR codes")
    derivation_path = serializers.SerializerMethodField(help_text="Below EXCHANGE_XPUB: m/0/<index>")
    tx_hash = serializers.SerializerMethodField(help_text="The Bitcoin transaction that paid it, once confirmed")

    class Meta:
        model = ExchangePayment
        fields = [
            "payment_id",
            "user_id",
            "aitbc_amount",
            "btc_amount",
            "rate",
            "payment_address",
            "payment_uri",
            "derivation_path",
            "status",
            "created_at",
            "expires_at",
            "confirmed_at",
            "tx_hash",
            "confirmations",
        ]
        read_only_fields = fields

    def get_payment_uri(self, payment: ExchangePayment) -> str:
        return f"bitcoin:{payment.deposit_address}?amount={payment.btc_amount:.8f}"

    def get_derivation_path(self, payment: ExchangePayment) -> str:
        return derivation_path(payment.derivation_index)

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_tx_hash(self, payment: ExchangePayment) -> str | None:
        return payment.txid or None


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "The payment processor's webhook",
            value={
                "payment_id": EXCHANGE_PAYMENT_EXAMPLE["payment_id"],
                "txid": EXAMPLE_TXID,
                "confirmations": 2,
                "amount_btc": 0.01,
            },
            request_only=True,
        )
    ]
)
class ExchangePaymentConfirmSerializer(serializers.Serializer):
    """All optional for staff; a signed webhook must name the payment it confirms in ``payment_id``
    and report ``txid`` (or ``tx_hash``), ``confirmations`` and ``amount_btc``."""

    payment_id = serializers.CharField(required=False, max_length=40, help_text="Must be the path's id")
    txid = serializers.RegexField(TXID_PATTERN, required=False, help_text="Hex id of the paying transaction")
    tx_hash = serializers.RegexField(TXID_PATTERN, required=False, help_text="The same as txid (older clients)")
    confirmations = serializers.IntegerField(
        required=False, min_value=0, help_text="Fewer than EXCHANGE_MIN_CONFIRMATIONS is refused"
    )
    amount_btc = amount_field(required=False, help_text="BTC received; less than btc_amount is refused")

    def validate(self, attrs):
        if "txid" in attrs and "tx_hash" in attrs and attrs["txid"].lower() != attrs["tx_hash"].lower():
            raise serializers.ValidationError({"tx_hash": "Differs from txid."})
        txid = attrs.pop("tx_hash", None) or attrs.get("txid") or ""
        attrs["txid"] = txid.lower()
        return attrs


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Confirmed and minted",
            value={
                "status": "ok",
                "payment_id": EXCHANGE_PAYMENT_EXAMPLE["payment_id"],
                "aitbc_amount": "1000.00000000",
                "minted": True,
                "ledger_transaction_id": 42,
                "payment": {
                    **EXCHANGE_PAYMENT_EXAMPLE,
                    "status": "confirmed",
                    "confirmed_at": "2026-03-05T12:20:00.000000Z",
                    "tx_hash": EXAMPLE_TXID,
                    "confirmations": 2,
                },
            },
            response_only=True,
        )
    ]
)
class ExchangeConfirmationSerializer(serializers.Serializer):
    status = serializers.CharField(help_text='Always "ok"')
    payment_id = serializers.CharField()
    aitbc_amount = serializers.DecimalField(**AMOUNT, help_text="Credits minted into the buyer's wallet")
    minted = serializers.BooleanField(help_text="False when it had been confirmed before: nothing minted this time")
    ledger_transaction_id = serializers.IntegerField(help_text="The mint (business key exchange:<payment_id>)")
    payment = ExchangePaymentViewSerializer()


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Rates",
            value={
                "btc_to_aitbc": 100000,
                "aitbc_to_btc": 0.00001,
                "fee_percent": 0,
                "network": "testnet",
                "payment_ttl_seconds": 3600,
            },
            response_only=True,
        )
    ]
)
class ExchangeRatesSerializer(serializers.Serializer):
    btc_to_aitbc = serializers.DecimalField(**AMOUNT, coerce_to_string=False, help_text="AITBC per BTC")
    aitbc_to_btc = serializers.DecimalField(**AMOUNT, coerce_to_string=False, help_text="BTC per AITBC")
    fee_percent = serializers.DecimalField(max_digits=5, decimal_places=2, coerce_to_string=False)
    network = serializers.CharField(help_text="Bitcoin network of the deposit addresses")
    payment_ttl_seconds = serializers.IntegerField(help_text="How long a payment request stays open")


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Market statistics",
            value={
                "price": "0.00001000",
                "price_change_24h": "0.00",
                "daily_volume": "2500.00000000",
                "daily_volume_btc": "0.02500000",
                "total_payments": 12,
                "pending_payments": 2,
                "expired_payments": 5,
                "total_requests": 19,
                "aitbc_minted": "48000.00000000",
                "btc_received": "0.48000000",
                "updated_at": "2026-03-05T12:00:00.000000Z",
            },
            response_only=True,
        )
    ]
)
class ExchangeMarketStatsSerializer(serializers.Serializer):
    price = serializers.DecimalField(**AMOUNT, help_text="BTC per AITBC")
    price_change_24h = serializers.DecimalField(max_digits=12, decimal_places=2, help_text="Percent, of the rate")
    daily_volume = serializers.DecimalField(**AMOUNT, help_text="AITBC minted by confirmations in the last 24 h")
    daily_volume_btc = serializers.DecimalField(**AMOUNT, help_text="BTC of those confirmations")
    total_payments = serializers.IntegerField(help_text="Confirmed payments")
    pending_payments = serializers.IntegerField(help_text="Open requests, before their deadline")
    expired_payments = serializers.IntegerField()
    total_requests = serializers.IntegerField(help_text="Every payment request made")
    aitbc_minted = serializers.DecimalField(**AMOUNT, help_text="AITBC minted through the exchange")
    btc_received = serializers.DecimalField(**AMOUNT, help_text="BTC of the confirmed payments")
    updated_at = serializers.DateTimeField()
