import re

from drf_spectacular.utils import OpenApiExample, extend_schema_field, extend_schema_serializer
from rest_framework import serializers

from core.crypto.addresses import is_wallet_address

EXAMPLE_ADDRESS = "ait12er44f65vdr5cq59mawm7272ku76v5f4hrge5x"
EXAMPLE_PUBLIC_KEY = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
EXAMPLE_SIGNATURE = (
    "8805145874501e0f04bc0eb2a1da51e1daa706d848cd0af4c2ba3c40ff258468"
    "bc541e4671a7c943a795409cc5aaa77e86adaa440467dc072df41f4c1b61fc0e"
)
AMOUNT = {"max_digits": 24, "decimal_places": 8}


@extend_schema_field(
    {
        "type": "string",
        # bech32 over 20 bytes: "ait1", 32 data and 6 checksum characters, in one case.
        "pattern": "^(ait1[02-9ac-hj-np-z]{38}|AIT1[02-9AC-HJ-NP-Z]{38})$",
        "example": EXAMPLE_ADDRESS,
    }
)
class WalletAddressField(serializers.CharField):
    default_error_messages = {"invalid_address": "Not a valid ait1… bech32 wallet address."}

    def __init__(self, **kwargs):
        super().__init__(max_length=90, **kwargs)

    def to_internal_value(self, data):
        address = super().to_internal_value(data)
        if not is_wallet_address(address):
            self.fail("invalid_address")
        return address.lower()


class HexBytesField(serializers.CharField):
    """Exactly ``length`` bytes written as hex; the validated value is the bytes."""

    default_error_messages = {"invalid_hex": "Must be {length} bytes as {digits} hex digits."}

    def __init__(self, *, length: int, **kwargs):
        self.length = length
        self.pattern = re.compile(rf"[0-9a-fA-F]{{{2 * length}}}")
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        text = super().to_internal_value(data)
        if not self.pattern.fullmatch(text):
            self.fail("invalid_hex", length=self.length, digits=2 * self.length)
        return bytes.fromhex(text)


@extend_schema_field({"type": "string", "pattern": "^[0-9a-fA-F]{64}$", "example": EXAMPLE_PUBLIC_KEY})
class PublicKeyField(HexBytesField):
    def __init__(self, **kwargs):
        super().__init__(length=32, **kwargs)


@extend_schema_field({"type": "string", "pattern": "^[0-9a-fA-F]{128}$", "example": EXAMPLE_SIGNATURE})
class SignatureField(HexBytesField):
    def __init__(self, **kwargs):
        super().__init__(length=64, **kwargs)


@extend_schema_serializer(
    examples=[OpenApiExample("Ask for a challenge", value={"wallet_address": EXAMPLE_ADDRESS}, request_only=True)]
)
class SignInNonceCreateSerializer(serializers.Serializer):
    wallet_address = WalletAddressField()


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Challenge",
            value={
                "wallet_address": EXAMPLE_ADDRESS,
                "nonce": "5f0c6a9e2b7d4c1a8e3f9b6d2a7c4e1f",
                "message": (
                    "Sign in to AITBC Coordinator\nDomain: localhost:8000\n"
                    f"Address: {EXAMPLE_ADDRESS}\nNonce: 5f0c6a9e2b7d4c1a8e3f9b6d2a7c4e1f\n"
                    "Issued: 2025-01-01T12:00:00+00:00\nExpires: 2025-01-01T12:05:00+00:00"
                ),
                "expires_at": "2025-01-01T12:05:00Z",
            },
            response_only=True,
        )
    ]
)
class SignInNonceSerializer(serializers.Serializer):
    wallet_address = serializers.CharField(source="address")
    nonce = serializers.CharField()
    message = serializers.CharField(help_text="Sign the UTF-8 bytes of this text with the wallet's Ed25519 key.")
    expires_at = serializers.DateTimeField()


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Signed challenge",
            value={"wallet_address": EXAMPLE_ADDRESS, "public_key": EXAMPLE_PUBLIC_KEY, "signature": EXAMPLE_SIGNATURE},
            request_only=True,
        )
    ]
)
class WalletLoginSerializer(serializers.Serializer):
    wallet_address = WalletAddressField()
    public_key = PublicKeyField(help_text="The wallet's Ed25519 public key, hex.")
    signature = SignatureField(help_text="Ed25519 signature of the challenge's message, hex.")
    nonce = serializers.CharField(
        max_length=64,
        required=False,
        help_text="The challenge signed; without it, the address's latest ones are tried.",
    )


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Signed in",
            value={
                "user_id": 7,
                "wallet_address": EXAMPLE_ADDRESS,
                "session_token": "aitbcs_Jx3…",
                "expires_at": "2025-01-02T12:00:00Z",
                "balance": "100.00000000",
            },
            response_only=True,
        )
    ]
)
class SignInSessionSerializer(serializers.Serializer):
    user_id = serializers.IntegerField()
    wallet_address = serializers.CharField()
    session_token = serializers.CharField(help_text="Send as X-Session-Token; shown once.")
    expires_at = serializers.DateTimeField()
    balance = serializers.DecimalField(**AMOUNT)


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Me",
            value={
                "user_id": 7,
                "username": EXAMPLE_ADDRESS,
                "wallet_address": EXAMPLE_ADDRESS,
                "balance": "100.00000000",
                "created_at": "2025-01-01T12:00:00Z",
            },
            response_only=True,
        )
    ]
)
class UserProfileSerializer(serializers.Serializer):
    user_id = serializers.IntegerField()
    username = serializers.CharField()
    wallet_address = serializers.CharField(allow_null=True, help_text="null until the account has a wallet")
    balance = serializers.DecimalField(**AMOUNT)
    created_at = serializers.DateTimeField()


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Balance",
            value={"user_id": 7, "wallet_address": EXAMPLE_ADDRESS, "balance": "100.00000000"},
            response_only=True,
        )
    ]
)
class UserBalanceSerializer(serializers.Serializer):
    user_id = serializers.IntegerField()
    wallet_address = serializers.CharField(allow_null=True, help_text="null until the account has a wallet")
    balance = serializers.DecimalField(**AMOUNT)


class UserLedgerEntrySerializer(serializers.Serializer):
    """One entry of the user's wallet: ``amount`` is positive when credited, negative when debited."""

    transaction_id = serializers.IntegerField()
    kind = serializers.CharField(source="transaction.kind")
    amount = serializers.DecimalField(**AMOUNT)
    memo = serializers.CharField(source="transaction.memo")
    job_id = serializers.UUIDField(source="transaction.job_id", allow_null=True)
    created_at = serializers.DateTimeField(source="transaction.created_at")
    business_key = serializers.CharField(source="transaction.business_key")


class SignOutSerializer(serializers.Serializer):
    status = serializers.CharField(default="ok")
