"""The payment routes that act on a job: pay for it, release or refund its escrow, read its payment.

The job's state and its payment change together, so the writes go through ``jobs.services``;
the money itself moves in ``payments.services``.
"""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.response import Response

from core.api.permissions import IsClient, is_admin
from core.errors import NotFound
from jobs import selectors, services
from payments.api.serializers import PaymentActionSerializer, PaymentCreateSerializer, PaymentViewSerializer
from payments.api.views import ERRORS, NOT_ESCROWED, PaymentMixin


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
        payment = services.job_attach_payment(
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
        services.job_payment_release(job_id=payment.job.pk)
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
        services.job_payment_refund(job_id=payment.job.pk, reason=reason)
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
        jobs = selectors.jobs_visible_to(user=request.user, is_admin=is_admin(request))
        job = jobs.select_related("payment__payer", "payment__escrow").filter(pk=job_id).first()
        if job is None:
            raise NotFound("Job not found.", code="JOB_NOT_FOUND")
        if job.payment is None:
            raise NotFound("This job has no payment.", code="PAYMENT_NOT_FOUND")
        return Response(self.get_serializer(job.payment).data)
