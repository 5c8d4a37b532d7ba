"""The payments API's reads: a payment and its receipt. Paying for a job, and releasing or refunding
its escrow, act on the job too: those routes are ``jobs.api.payment_views``."""

from django.db.models import Prefetch
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.response import Response

from core.api.permissions import IsClient, is_admin
from core.errors import NotFound, ServiceError
from payments.api.serializers import PaymentActionSerializer, PaymentReceiptSerializer, PaymentViewSerializer
from payments.models import LedgerEntry, LedgerTransaction, Payment

ERRORS = {
    401: OpenApiResponse(description="No or invalid API key"),
    403: OpenApiResponse(description="Not a client key, or someone else's payment (FORBIDDEN)"),
    404: OpenApiResponse(description="No such payment (PAYMENT_NOT_FOUND)"),
}
NOT_ESCROWED = OpenApiResponse(
    description="The payment is no longer in escrow (PAYMENT_NOT_ESCROWED), or the job's state does not allow it"
)


class PaymentMixin:
    """A payment by its ``payment_id``: its payer's (or an admin key's), else 403."""

    permission_classes = [IsClient]
    serializer_class = PaymentViewSerializer

    def get_queryset(self):
        return Payment.objects.select_related("payer", "escrow", "job").order_by("-created_at", "-id")

    def get_object(self) -> Payment:
        payment = self.get_queryset().filter(payment_id=self.kwargs["payment_id"]).first()
        if payment is None:
            raise NotFound("Payment not found.", code="PAYMENT_NOT_FOUND")
        if payment.payer.user_id != self.request.user.pk and not is_admin(self.request):
            raise ServiceError("This payment is not yours.", code="FORBIDDEN", status_code=status.HTTP_403_FORBIDDEN)
        return payment

    def action_body(self, payment: Payment) -> dict:
        body = PaymentActionSerializer(data=self.request.data, context={"payment": payment})
        body.is_valid(raise_exception=True)
        return body.validated_data


class PaymentDetailView(PaymentMixin, generics.GenericAPIView):
    @extend_schema(summary="Get a payment", responses={200: PaymentViewSerializer, **ERRORS})
    def get(self, request, payment_id):
        return Response(self.get_serializer(self.get_object()).data)


class PaymentStatusView(PaymentDetailView):
    """``/status``: the payment as ``GET /v1/payments/{payment_id}`` shows it (clients poll this route)."""


class PaymentReceiptView(PaymentMixin, generics.GenericAPIView):
    serializer_class = PaymentReceiptSerializer

    def get_queryset(self):
        entries = LedgerEntry.objects.select_related("wallet").order_by("id")
        transactions = LedgerTransaction.objects.order_by("id").prefetch_related(Prefetch("entries", entries))
        return super().get_queryset().prefetch_related(Prefetch("job__transactions", transactions))

    @extend_schema(
        summary="Get a payment's receipt",
        description="The payment and the ledger transactions of its job (escrow hold, then settlement or "
        "refund), each with its business key, amounts and the hash it is sealed under in the explorer.",
        responses={200: PaymentReceiptSerializer, **ERRORS},
    )
    def get(self, request, payment_id):
        return Response(self.get_serializer(self.get_object()).data)
