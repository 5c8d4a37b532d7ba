from urllib.parse import parse_qs, urlparse

from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.pagination import ItemsLimitOffsetPagination
from core.api.permissions import IsClient, is_admin
from core.errors import NotFound, ServiceError
from jobs import selectors, services
from jobs.api.serializers import (
    JobResultSerializer,
    JobSerializer,
    JobSubmitSerializer,
    ReceiptDocumentSerializer,
    ReceiptListSerializer,
    job_view,
    plain_submission,
)
from jobs.filters import JobFilter
from jobs.models import Job, JobStatus

IDEMPOTENCY_KEY_MAX_LENGTH = 255
IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    {"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX_LENGTH},
    OpenApiParameter.HEADER,
    required=False,
    description="Repeat a submission safely: the same key returns the job created first.",
)
ERRORS = {
    401: OpenApiResponse(description="No or invalid API key"),
    403: OpenApiResponse(description="The key's scope does not allow this"),
    404: OpenApiResponse(description="No such job (or not yours)"),
}


class ClientJobMixin:
    """Client routes: a client sees only its own jobs; an admin key sees all."""

    permission_classes = [IsClient]
    serializer_class = JobSerializer
    # Views that answer with a JobView show queued jobs' positions; the others skip the count.
    shows_queue_position = True

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Job.objects.none()
        jobs = selectors.jobs_visible_to(user=self.request.user, is_admin=is_admin(self.request))
        if self.shows_queue_position:
            jobs = selectors.with_queue_position(jobs)
        return jobs.order_by("-created_at", "-id")

    def get_object(self):
        job = self.get_queryset().filter(pk=self.kwargs["job_id"]).first()
        if job is None:
            raise NotFound("Job not found.", code="JOB_NOT_FOUND")
        return job

    def job_response(self, job: Job, status_code=status.HTTP_200_OK, headers=None) -> Response:
        outlook = selectors.queue_outlook(jobs=[job]).get(job.pk, {})
        # JobSerializer's shape (``job_view``), without a serializer instance around it.
        return Response(job_view(job, outlook=outlook), status=status_code, headers=headers)


class JobListView(ClientJobMixin, generics.ListAPIView):
    pagination_class = ItemsLimitOffsetPagination
    filter_backends = [DjangoFilterBackend]
    filterset_class = JobFilter

    def get_queryset(self):
        # A verified job is listed; its attempts are its own business (its receipts name them).
        return super().get_queryset().filter(parent__isnull=True)

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "outlook": getattr(self, "_outlook", {})}

    def paginate_queryset(self, queryset):
        page = super().paginate_queryset(queryset)
        self._outlook = selectors.queue_outlook(jobs=page)
        return page

    @extend_schema(summary="List my jobs", responses={200: JobSerializer(many=True), **ERRORS})
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class JobSubmitView(ClientJobMixin, generics.GenericAPIView):
    @extend_schema(
        summary="Submit a job",
        request=JobSubmitSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={
            201: JobSerializer,
            409: OpenApiResponse(description="Idempotency-Key reused with a different request"),
            422: OpenApiResponse(description="Invalid job (INVALID_JOB_TYPE, INVALID_VERIFICATION, VALIDATION_ERROR)"),
            **ERRORS,
        },
    )
    def post(self, request, *args, **kwargs):
        validated = plain_submission(request.data)
        if validated is None:
            submit = JobSubmitSerializer(data=request.data)
            submit.is_valid(raise_exception=True)
            validated = submit.validated_data
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 0 < len(key) <= IDEMPOTENCY_KEY_MAX_LENGTH:
            raise ServiceError(
                f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX_LENGTH} characters.",
                code="VALIDATION_ERROR",
                status_code=422,
            )
        submission = services.job_submit(client=request.user, idempotency_key=key, **validated)
        job = submission.job
        if job.status == JobStatus.QUEUED:
            job.queue_position = submission.queue_position or selectors.queue_position(job=job)
        headers = {"Location": f"/v1/jobs/{job.pk}"}
        if not submission.created:
            headers["Idempotent-Replayed"] = "true"
        return self.job_response(job, status.HTTP_201_CREATED, headers)


class JobsView(JobListView, JobSubmitView):
    """``/v1/jobs``: list (GET) and submit (POST)."""


CANCEL_SCHEMA = extend_schema(
    summary="Cancel a job",
    request=None,
    responses={200: JobSerializer, 409: OpenApiResponse(description="Job already finished"), **ERRORS},
)


class JobDetailView(ClientJobMixin, generics.GenericAPIView):
    @extend_schema(summary="Get a job", responses={200: JobSerializer, **ERRORS})
    def get(self, request, job_id):
        return self.job_response(self.get_object())

    @CANCEL_SCHEMA
    def delete(self, request, job_id):
        return self._cancel()

    def _cancel(self):
        job = self.get_object()
        services.job_cancel(job_id=job.pk)
        return self.job_response(self.get_object())


class JobStatusView(JobDetailView):
    http_method_names = ["get", "head", "options"]


class JobCancelView(JobDetailView):
    http_method_names = ["post", "options"]

    @CANCEL_SCHEMA
    def post(self, request, job_id):
        return self._cancel()


class JobResultView(ClientJobMixin, generics.GenericAPIView):
    shows_queue_position = False

    @extend_schema(
        summary="Get a job's result and receipt",
        responses={200: JobResultSerializer, 425: OpenApiResponse(description="job not ready"), **ERRORS},
    )
    def get(self, request, job_id):
        job = self.get_object()
        if job.status in JobStatus.ACTIVE:
            raise ServiceError("job not ready", code="JOB_NOT_READY", status_code=status.HTTP_425_TOO_EARLY)
        receipt = selectors.receipts_for_job(job_id=job.pk).first()
        return Response(
            JobResultSerializer(
                {
                    "job_id": str(job.pk),
                    "status": job.status,
                    "state": job.state,
                    "result": job.result,
                    "error": job.error_message or None,
                    "error_code": job.error_code,
                    "usage": job.usage,
                    "completed_at": job.completed_at,
                    "receipt": receipt.document if receipt else None,
                    "receipt_opening": receipt.opening if receipt else None,
                }
            ).data
        )


class JobReceiptView(ClientJobMixin, generics.GenericAPIView):
    shows_queue_position = False

    @extend_schema(
        summary="Get a job's latest signed receipt",
        responses={200: ReceiptDocumentSerializer, **ERRORS},
    )
    def get(self, request, job_id):
        job = self.get_object()
        receipt = selectors.receipts_for_job(job_id=job.pk).first()
        if receipt is None:
            raise NotFound("This job has no receipt yet.", code="RECEIPT_NOT_FOUND")
        return Response(receipt.document)


class ReceiptCursorPagination(CursorPagination):
    ordering = ("-created_at", "-receipt_id")
    page_size = 50

    def get_paginated_response(self, receipts):
        next_link = self.get_next_link()
        cursor = parse_qs(urlparse(next_link).query).get(self.cursor_query_param, [None])[0] if next_link else None
        return Response(
            {
                "items": [receipt.document for receipt in receipts],
                "openings": {receipt.receipt_id: receipt.opening for receipt in receipts if receipt.opening},
                "next_cursor": cursor,
            }
        )


class JobReceiptsView(ClientJobMixin, APIView):
    shows_queue_position = False

    @extend_schema(
        summary="List a job's signed receipts",
        parameters=[OpenApiParameter("cursor", str, required=False)],
        responses={200: ReceiptListSerializer, **ERRORS},
    )
    def get(self, request, job_id):
        job = self.get_object()
        paginator = ReceiptCursorPagination()
        receipts = selectors.receipts_for_job(job_id=job.pk, with_attempts=True)
        page = paginator.paginate_queryset(receipts, request, view=self)
        return paginator.get_paginated_response(page)
