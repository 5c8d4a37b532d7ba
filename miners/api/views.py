from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, PolymorphicProxySerializer, extend_schema
from rest_framework import generics, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api.authentication import SessionTokenAuthentication
from core.api.pagination import ItemsLimitOffsetPagination
from core.api.permissions import IsMiner, is_admin
from core.errors import Invalid, NotFound
from jobs import services as job_services
from jobs.api.serializers import JobSerializer
from jobs.models import Job
from jobs.selectors import claimable_jobs
from miners import selectors, services
from miners.api.authentication import MinerKeyAuthentication
from miners.api.serializers import (
    ClaimSerializer,
    EarningsSerializer,
    FailSerializer,
    HeartbeatSerializer,
    LeasedJobBatchSerializer,
    LeasedJobSerializer,
    MinerCapabilitiesSerializer,
    MinerRegisteredSerializer,
    MinerRegisterSerializer,
    MinerSerializer,
    OkSerializer,
    PollSerializer,
    ResultAcceptedSerializer,
    ResultSerializer,
    ResultWithJobSerializer,
    TutorialCompleteSerializer,
)
from miners.models import Miner

MINER_ID_HEADER = OpenApiParameter(
    "X-Miner-ID",
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="Which of the key owner's miners is speaking (defaults to the owner's username).",
)
ERRORS = {
    401: OpenApiResponse(description="No or invalid API key"),
    403: OpenApiResponse(description="Not a miner key"),
    404: OpenApiResponse(description="Miner not registered, or no such job"),
}
LEASE_CONFLICT = {409: OpenApiResponse(description="This miner does not hold the job's current lease")}


def _named_miner_id(request) -> str | None:
    data = request.data if isinstance(request.data, dict) else {}
    return request.headers.get("X-Miner-ID") or data.get("miner_id") or request.query_params.get("miner_id")


class MinerView(APIView):
    # The project's defaults, with the key read together with the miner the request names.
    authentication_classes = [MinerKeyAuthentication, SessionTokenAuthentication, SessionAuthentication]
    permission_classes = [IsMiner]

    def miner(self, miner_id: str | None = None) -> Miner:
        miner_id = str(miner_id or _named_miner_id(self.request) or self.request.user.username)
        # The miner named by X-Miner-ID was read with the API key (MinerKeyAuthentication).
        named_id, named = getattr(self.request, "named_miner", (None, None))
        return selectors.miner_for_owner(
            owner=self.request.user,
            miner_id=miner_id,
            any_owner=is_admin(self.request),
            looked_up=named if named_id == miner_id else selectors.NOT_LOOKED_UP,
        )

    def miner_for_job(self, job_id) -> Miner:
        """The speaking miner; without a name, the caller's miner that holds the job."""
        if _named_miner_id(self.request):
            return self.miner()
        job = Job.objects.select_related("miner").filter(pk=job_id).first()
        if job is None:
            raise NotFound("Job not found.", code="JOB_NOT_FOUND")
        if job.miner is not None and (job.miner.owner_id == self.request.user.pk or is_admin(self.request)):
            return job.miner
        return self.miner()

    def accept_result(self, *, job_id, miner: Miner, data: dict) -> Response:
        completion = job_services.job_complete(
            job_id=job_id,
            miner=miner,
            result=data["result"],
            metrics=data.get("metrics"),
            lease_token=data.get("lease_token") or None,
        )
        # The shape of ResultAcceptedSerializer, built directly: miners post results all the time.
        receipt = completion.receipt.document if completion.receipt else None
        return Response({"status": "ok", "job_status": completion.job.status, "receipt": receipt})


class RegisterView(MinerView):
    @extend_schema(
        summary="Register (or re-register) a miner",
        request=MinerRegisterSerializer,
        parameters=[MINER_ID_HEADER],
        responses={200: MinerRegisteredSerializer, 409: OpenApiResponse(description="miner_id taken"), **ERRORS},
    )
    def post(self, request):
        registration = MinerRegisterSerializer(data=request.data)
        registration.is_valid(raise_exception=True)
        data = registration.validated_data
        miner_id = request.headers.get("X-Miner-ID") or data.get("miner_id") or request.user.username
        if len(miner_id) > 128 or "\x00" in miner_id:
            raise Invalid("A miner id is at most 128 characters.", code="VALIDATION_ERROR")
        miner, session_token = services.miner_register(
            owner=request.user, miner_id=miner_id, capabilities=data["parsed"], public_key=data.get("public_key", "")
        )
        return Response(MinerRegisteredSerializer({"session_token": session_token, "miner_id": miner.miner_id}).data)


class HeartbeatView(MinerView):
    @extend_schema(
        summary="Heartbeat: I am alive; extend my leases",
        request=HeartbeatSerializer,
        parameters=[MINER_ID_HEADER],
        responses={200: OkSerializer, **ERRORS},
    )
    def post(self, request):
        heartbeat = HeartbeatSerializer(data=request.data)
        heartbeat.is_valid(raise_exception=True)
        data = heartbeat.validated_data
        metadata = data.get("metadata")
        if "status" in data:
            metadata = {**(metadata or {}), "reported_status": data["status"]}
        services.miner_heartbeat(miner=self.miner(), inflight=data.get("inflight"), metadata=metadata)
        return Response({"status": "ok"})


POLL_RESPONSES = {
    200: PolymorphicProxySerializer(
        component_name="PolledWork",
        serializers=[LeasedJobSerializer, LeasedJobBatchSerializer],
        resource_type_field_name=None,
    ),
    204: OpenApiResponse(description="No work within max_wait_seconds"),
    **ERRORS,
}


class PollView(MinerView):
    """Lease the next job(s) this miner can run, waiting up to ``max_wait_seconds`` for one."""

    @extend_schema(
        summary="Poll for work (long poll)",
        request=PollSerializer,
        parameters=[MINER_ID_HEADER],
        responses=POLL_RESPONSES,
    )
    def post(self, request):
        return self._poll(request.data)

    @extend_schema(
        summary="Poll for work (long poll)", parameters=[MINER_ID_HEADER, PollSerializer], responses=POLL_RESPONSES
    )
    def get(self, request):
        return self._poll(request.query_params)

    def _poll(self, params) -> Response:
        poll = PollSerializer(data=params)
        poll.is_valid(raise_exception=True)
        max_jobs = poll.validated_data["max_jobs"]
        wait = min(poll.validated_data["max_wait_seconds"], settings.MINER_MAX_POLL_WAIT_SECONDS)
        miner = self.miner()
        services.miner_touch(miner=miner)
        jobs = job_services.job_claim_waiting(miner=miner, limit=max_jobs, wait_seconds=wait)
        if not jobs:
            return Response(status=status.HTTP_204_NO_CONTENT)
        if max_jobs == 1:
            return Response(LeasedJobSerializer(jobs[0]).data)
        return Response(LeasedJobBatchSerializer({"jobs": jobs}).data)


class ResultView(MinerView):
    @extend_schema(
        summary="Submit a job's result",
        request=ResultSerializer,
        parameters=[MINER_ID_HEADER],
        responses={200: ResultAcceptedSerializer, **LEASE_CONFLICT, **ERRORS},
    )
    def post(self, request, job_id):
        submitted = ResultSerializer(data=request.data)
        submitted.is_valid(raise_exception=True)
        return self.accept_result(job_id=job_id, miner=self.miner_for_job(job_id), data=submitted.validated_data)


class LegacyResultView(MinerView):
    @extend_schema(
        summary="Submit a job's result (job_id in the body)",
        request=ResultWithJobSerializer,
        parameters=[MINER_ID_HEADER],
        responses={200: ResultAcceptedSerializer, **LEASE_CONFLICT, **ERRORS},
    )
    def post(self, request):
        submitted = ResultWithJobSerializer(data=request.data)
        submitted.is_valid(raise_exception=True)
        job_id = submitted.validated_data["job_id"]
        return self.accept_result(job_id=job_id, miner=self.miner_for_job(job_id), data=submitted.validated_data)


class FailView(MinerView):
    @extend_schema(
        summary="Report that a job's attempt failed",
        request=FailSerializer,
        parameters=[MINER_ID_HEADER],
        responses={200: OkSerializer, **LEASE_CONFLICT, **ERRORS},
    )
    def post(self, request, job_id):
        failure = FailSerializer(data=request.data)
        failure.is_valid(raise_exception=True)
        data = failure.validated_data
        job_services.job_fail(
            job_id=job_id,
            miner=self.miner_for_job(job_id),
            error_code=data["error_code"],
            error_message=data["error_message"],
            lease_token=data.get("lease_token") or None,
        )
        return Response({"status": "ok"})


class MinerJobsView(MinerView, generics.GenericAPIView):
    queryset = Job.objects.none()
    serializer_class = JobSerializer
    pagination_class = ItemsLimitOffsetPagination

    @extend_schema(summary="List a miner's jobs", request=None, responses={200: JobSerializer(many=True), **ERRORS})
    def post(self, request, miner_id):
        jobs = selectors.jobs_of_miner(miner=self.miner(miner_id))
        page = self.paginate_queryset(jobs)
        return self.get_paginated_response(JobSerializer(page, many=True).data)


class MinerEarningsView(MinerView):
    @extend_schema(summary="A miner's work and earnings", request=None, responses={200: EarningsSerializer, **ERRORS})
    def post(self, request, miner_id):
        miner = self.miner(miner_id)
        return Response(
            EarningsSerializer({"miner_id": miner.miner_id, **selectors.miner_work_summary(miner=miner)}).data
        )


class MinerCapabilitiesView(MinerView):
    @extend_schema(
        summary="Replace a miner's capabilities",
        request=MinerCapabilitiesSerializer,
        responses={200: MinerSerializer, **ERRORS},
    )
    def put(self, request, miner_id):
        update = MinerCapabilitiesSerializer(data=request.data)
        update.is_valid(raise_exception=True)
        miner = services.miner_update_capabilities(
            miner=self.miner(miner_id), capabilities=update.validated_data["capabilities"]
        )
        return Response(MinerSerializer(miner).data)


class MinerDetailView(MinerView):
    @extend_schema(summary="Deregister a miner; its jobs return to the queue", responses={200: OkSerializer, **ERRORS})
    def delete(self, request, miner_id):
        services.miner_deregister(miner=self.miner(miner_id))
        return Response({"status": "ok"})


# --- The tutorial's claim protocol -------------------------------------------------------


class AvailableJobsView(MinerView, generics.GenericAPIView):
    queryset = Job.objects.none()
    serializer_class = JobSerializer
    pagination_class = ItemsLimitOffsetPagination

    @extend_schema(
        summary="Jobs this miner could claim now",
        parameters=[OpenApiParameter("miner_id", str, required=False), MINER_ID_HEADER],
        responses={200: JobSerializer(many=True), **ERRORS},
    )
    def get(self, request):
        miner = self.miner()
        services.miner_touch(miner=miner)
        jobs = claimable_jobs(miner=miner, now=timezone.now()).select_related("miner", "payment").order_by("rank_at")
        page = self.paginate_queryset(jobs)
        return self.get_paginated_response(JobSerializer(page, many=True).data)


class ClaimView(MinerView):
    @extend_schema(
        summary="Claim one specific job",
        request=ClaimSerializer,
        responses={200: LeasedJobSerializer, 409: OpenApiResponse(description="Job not available"), **ERRORS},
    )
    def post(self, request, job_id):
        ClaimSerializer(data=request.data).is_valid(raise_exception=True)
        miner = self.miner()
        services.miner_touch(miner=miner)
        job = job_services.job_claim_specific(miner=miner, job_id=job_id)
        return Response(LeasedJobSerializer(job).data)


class CompleteView(MinerView):
    @extend_schema(
        summary="Complete a claimed job",
        request=TutorialCompleteSerializer,
        responses={200: ResultAcceptedSerializer, **LEASE_CONFLICT, **ERRORS},
    )
    def post(self, request, job_id):
        submitted = TutorialCompleteSerializer(data=request.data)
        submitted.is_valid(raise_exception=True)
        return self.accept_result(job_id=job_id, miner=self.miner_for_job(job_id), data=submitted.validated_data)
