"""The exchange API: buy AITBC with Bitcoin.

``create-payment`` and ``payment-status`` are the buyer's (client key or session token; an admin key
may act for anyone). ``confirm-payment`` is staff's, or the payment processor's through a webhook
whose raw body is signed with ``EXCHANGE_WEBHOOK_SECRET``. ``rates`` and ``market-stats`` are public.
"""

from django.conf import settings
from django.contrib.auth import get_user_model
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import AllowAny, BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.permissions import IsClient, is_admin
from core.errors import NotFound, ServiceError
from payments.api.exchange_serializers import (
    ExchangeConfirmationSerializer,
    ExchangeMarketStatsSerializer,
    ExchangePaymentConfirmSerializer,
    ExchangePaymentCreateSerializer,
    ExchangePaymentViewSerializer,
    ExchangeRatesSerializer,
)
from payments.exchange import (
    exchange_market_stats,
    exchange_payment_as_it_stands,
    exchange_payment_confirm,
    exchange_payment_create,
    exchange_payment_visible_to,
    exchange_rates,
    webhook_signature_valid,
)

SIGNATURE_HEADER = "X-Exchange-Signature"

NOT_FOUND = OpenApiResponse(description="No such payment request of yours (EXCHANGE_PAYMENT_NOT_FOUND)")
NO_KEY = OpenApiResponse(description="No or invalid API key or session token")


class IsAdminOrSignedWebhook(BasePermission):
    """An admin key or staff session; or, with ``X-Exchange-Signature``, a body signed by the payment processor."""

    def has_permission(self, request, view):
        signature = request.headers.get(SIGNATURE_HEADER)
        if signature is None:
            return is_admin(request)
        if not settings.EXCHANGE_WEBHOOK_SECRET:
            raise ServiceError(
                "Webhook confirmation is disabled (EXCHANGE_WEBHOOK_SECRET is not set).",
                code="WEBHOOK_DISABLED",
                status_code=status.HTTP_403_FORBIDDEN,
            )
        # The raw body, read before DRF parses it: the signature covers these exact bytes.
        if not webhook_signature_valid(body=request.body, signature_header=signature):
            raise ServiceError(
                "Invalid webhook signature.", code="INVALID_SIGNATURE", status_code=status.HTTP_401_UNAUTHORIZED
            )
        return True


class ExchangeCreatePaymentView(APIView):
    permission_classes = [IsClient]

    @extend_schema(
        summary="Request to buy AITBC with Bitcoin",
        description="Quotes btc_amount for aitbc_amount at BTC_TO_AITBC_RATE and gives this request its own "
        "deposit address. Send exactly btc_amount there before expires_at; once the payment is confirmed, "
        "aitbc_amount is minted into your wallet.",
        request=ExchangePaymentCreateSerializer,
        responses={
            201: ExchangePaymentViewSerializer,
            400: OpenApiResponse(description="Amount mismatch (AMOUNT_MISMATCH): the amounts disagree with the rate"),
            401: NO_KEY,
            403: OpenApiResponse(description="Not a client key, or user_id is not yours (FORBIDDEN)"),
            404: OpenApiResponse(description="An admin named a user that does not exist (USER_NOT_FOUND)"),
            422: OpenApiResponse(description="Invalid body (VALIDATION_ERROR, INVALID_AMOUNT)"),
        },
    )
    def post(self, request):
        body = ExchangePaymentCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        payment = exchange_payment_create(
            user=self._buyer(data["user_id"]), aitbc_amount=data["aitbc_amount"], btc_amount=data["btc_amount"]
        )
        return Response(
            ExchangePaymentViewSerializer(payment).data,
            status=status.HTTP_201_CREATED,
            headers={"Location": f"/v1/exchange/payment-status/{payment.pk}"},
        )

    def _buyer(self, user_id: int):
        if user_id == self.request.user.pk:
            return self.request.user
        if not is_admin(self.request):
            raise ServiceError(
                "You may only buy credits for yourself.", code="FORBIDDEN", status_code=status.HTTP_403_FORBIDDEN
            )
        # The user model through Django's auth: the accounts app sits above payments.
        user = get_user_model().objects.filter(pk=user_id).first()
        if user is None:
            raise NotFound("User not found.", code="USER_NOT_FOUND")
        return user


class ExchangePaymentStatusView(APIView):
    permission_classes = [IsClient]

    @extend_schema(
        summary="Get a payment request's status",
        description="pending until its deadline, then expired; confirmed once the deposit is confirmed. "
        "Someone else's request is a 404, as a missing one.",
        responses={
            200: ExchangePaymentViewSerializer,
            401: NO_KEY,
            403: OpenApiResponse(description="Not a client key"),
            404: NOT_FOUND,
        },
    )
    def get(self, request, payment_id):
        payment = exchange_payment_visible_to(payment_id=payment_id, user=request.user, is_admin=is_admin(request))
        if payment is None:
            raise NotFound("Exchange payment not found.", code="EXCHANGE_PAYMENT_NOT_FOUND")
        return Response(ExchangePaymentViewSerializer(exchange_payment_as_it_stands(payment)).data)


class ExchangeConfirmPaymentView(APIView):
    permission_classes = [IsAdminOrSignedWebhook]

    @extend_schema(
        summary="Confirm a payment request and mint its credits",
        description=(
            "Staff (admin key or staff session), or the payment processor: a webhook whose raw body is signed "
            f"with HMAC-SHA256 under EXCHANGE_WEBHOOK_SECRET, sent as `{SIGNATURE_HEADER}: sha256=<hex>`, and "
            "whose body names the payment in payment_id and reports txid, confirmations and amount_btc (a webhook "
            "missing any of them is 422 CONFIRMATION_INCOMPLETE, naming them in errors). Staff may leave those out. "
            "Mints aitbc_amount into the buyer's wallet once: "
            "confirming a confirmed payment again (a repeated delivery) is 200 with the first confirmation and "
            "minted false."
        ),
        parameters=[
            OpenApiParameter(
                SIGNATURE_HEADER,
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                required=False,
                description="sha256=<hex HMAC-SHA256 of the raw body>; makes the call a webhook",
            )
        ],
        request=ExchangePaymentConfirmSerializer,
        responses={
            200: ExchangeConfirmationSerializer,
            401: OpenApiResponse(description="No credentials, or a bad webhook signature (INVALID_SIGNATURE)"),
            403: OpenApiResponse(description="Not an admin, or webhooks are disabled (WEBHOOK_DISABLED)"),
            404: OpenApiResponse(description="No such payment request (EXCHANGE_PAYMENT_NOT_FOUND)"),
            409: OpenApiResponse(description="PAYMENT_EXPIRED, UNDERPAID or NOT_ENOUGH_CONFIRMATIONS"),
            422: OpenApiResponse(
                description="Invalid body, or a webhook without this payment's id (VALIDATION_ERROR) or without "
                "txid, confirmations or amount_btc (CONFIRMATION_INCOMPLETE)"
            ),
        },
    )
    def post(self, request, payment_id):
        webhook = SIGNATURE_HEADER in request.headers
        body = ExchangePaymentConfirmSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        # The signature covers the body, not the path: the body must say which payment it confirms.
        if (webhook or "payment_id" in data) and data.get("payment_id") != payment_id:
            raise ValidationError({"payment_id": "Must be the id of the payment in the path."})
        confirmation = exchange_payment_confirm(
            payment_id=payment_id,
            actor=None if webhook else request.user,
            txid=data["txid"],
            confirmations=data.get("confirmations"),
            amount_btc=data.get("amount_btc"),
        )
        payment = confirmation.payment
        return Response(
            ExchangeConfirmationSerializer(
                {
                    "status": "ok",
                    "payment_id": payment.pk,
                    "aitbc_amount": payment.aitbc_amount,
                    "minted": confirmation.minted_now,
                    "ledger_transaction_id": confirmation.mint.pk,
                    "payment": payment,
                }
            ).data
        )


class ExchangeRatesView(APIView):
    permission_classes = [AllowAny]

    @extend_schema(summary="Exchange rates (public)", responses={200: ExchangeRatesSerializer})
    def get(self, request):
        return Response(ExchangeRatesSerializer(exchange_rates()).data)


class ExchangeMarketStatsView(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        summary="Exchange statistics (public)",
        description="Totals over every payment request: confirmed, pending and expired counts, AITBC minted and "
        "BTC received through the exchange, and the last 24 hours' volume.",
        responses={200: ExchangeMarketStatsSerializer},
    )
    def get(self, request):
        return Response(ExchangeMarketStatsSerializer(exchange_market_stats()).data)
