"""The payments API: pay for a job, read a payment and its receipt, release or refund its escrow.

A payment moves its job's price and payment status with it, so the writes go through
``jobs.services``; the money itself moves in ``payments.services``.
"""

from django.db.models import Prefetch
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.response import Response

from core.api.permissions import IsClient, is_admin
from core.errors import NotFound, ServiceError
from jobs import selectors as job_selectors
from jobs import services as job_services
from payments.api.serializers import (
    PaymentActionSerializer,
    PaymentCreateSerializer,
    PaymentReceiptSerializer,
    PaymentViewSerializer,
)
from payments.models import LedgerEntry, LedgerTransaction, Payment
from payments.selectors import payment_of_job

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
        return Payment.objects.select_related("payer", "escrow").order_by("-created_at", "-id")

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


class PaymentCreateView(generics.GenericAPIView):
    permission_classes = [IsClient]
    serializer_class = PaymentCreateSerializer

    @extend_schema(
        summary="Pay for a job",
        description="Holds the amount in escrow from your wallet for a job of yours that has no payment yet "
        "(one submitted for a model without a catalog price and without payment_amount).",
        request=PaymentCreateSerializer,
        responses={
            201: PaymentViewSerializer,
            402: OpenApiResponse(description="Not enough credits in your wallet (INSUFFICIENT_FUNDS)"),
            404: OpenApiResponse(description="No such job of yours (JOB_NOT_FOUND)"),
            409: OpenApiResponse(
                description="The job already has a payment (PAYMENT_EXISTS), or has finished (JOB_TERMINAL)"
            ),
            422: OpenApiResponse(description="Invalid body (VALIDATION_ERROR)"),
            401: ERRORS[401],
            403: OpenApiResponse(description="Not a client key"),
        },
    )
    def post(self, request):
        body = PaymentCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        payment = job_services.job_attach_payment(
            job_id=data["job_id"],
            client=request.user,
            amount=data["amount"],
            currency=data["currency"],
            payment_method=data["payment_method"],
        )
        return Response(
            PaymentViewSerializer(payment).data,
            status=status.HTTP_201_CREATED,
            headers={"Location": f"/v1/payments/{payment.payment_id}"},
        )


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


class PaymentReleaseView(PaymentMixin, generics.GenericAPIView):
    @extend_schema(
        summary="Release a payment's escrow to the job's miner",
        description="Only for a completed job whose payment is still escrowed; completion normally settles "
        "the escrow by itself. The payer or an admin key may release.",
        request=PaymentActionSerializer,
        responses={200: PaymentViewSerializer, 409: NOT_ESCROWED, **ERRORS},
    )
    def post(self, request, payment_id):
        payment = self.get_object()
        self.action_body(payment)
        job_services.job_payment_release(job_id=payment.job_id)
        return Response(self.get_serializer(self.get_object()).data)


class PaymentRefundView(PaymentMixin, generics.GenericAPIView):
    @extend_schema(
        summary="Refund a payment's escrow to the payer",
        description="Only for a job that failed, expired or was cancelled while its payment is still "
        "escrowed (those normally refund by themselves). A queued or running job is 409 JOB_ACTIVE: "
        "cancel it instead, which refunds its escrow. The payer or an admin key may refund.",
        request=PaymentActionSerializer,
        responses={200: PaymentViewSerializer, 409: NOT_ESCROWED, **ERRORS},
    )
    def post(self, request, payment_id):
        payment = self.get_object()
        reason = self.action_body(payment).get("reason") or f"Refunded by {request.user}."
        job_services.job_payment_refund(job_id=payment.job_id, reason=reason)
        return Response(self.get_serializer(self.get_object()).data)


class JobPaymentDetailView(generics.GenericAPIView):
    """``GET /v1/jobs/{job_id}/payment``: another client's job is a 404, as on every job route."""

    permission_classes = [IsClient]
    serializer_class = PaymentViewSerializer

    @extend_schema(
        summary="Get a job's payment",
        responses={
            200: PaymentViewSerializer,
            404: OpenApiResponse(description="No such job of yours (JOB_NOT_FOUND), or it has no payment"),
            401: ERRORS[401],
            403: OpenApiResponse(description="Not a client key"),
        },
    )
    def get(self, request, job_id):
        jobs = job_selectors.jobs_visible_to(user=request.user, is_admin=is_admin(request))
        if not jobs.filter(pk=job_id).exists():
            raise NotFound("Job not found.", code="JOB_NOT_FOUND")
        payment = payment_of_job(job_id=job_id)
        if payment is None:
            raise NotFound("This job has no payment.", code="PAYMENT_NOT_FOUND")
        return Response(self.get_serializer(payment).data)
