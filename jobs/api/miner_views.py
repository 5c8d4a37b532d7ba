"""The miner work protocol over HTTP: heartbeats, polls (long polls) and claims for work, results
and failures, and a miner's jobs, earnings and deregistration. Registration and capabilities
are ``miners.api.views``; these views speak for a miner the same way (``MinerView``)."""

from django.conf import settings
from django.utils import timezone
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, PolymorphicProxySerializer, extend_schema
from rest_framework import generics, status
from rest_framework.response import Response

from core.api.pagination import ItemsLimitOffsetPagination
from core.api.permissions import is_admin
from core.errors import NotFound
from jobs import selectors, services
from jobs.api.miner_serializers import (
    ClaimSerializer,
    EarningsSerializer,
    FailSerializer,
    HeartbeatSerializer,
    LeasedJobBatchSerializer,
    LeasedJobSerializer,
    OkSerializer,
    PollSerializer,
    ResultsAcceptedSerializer,
    ResultSerializer,
    ResultsSerializer,
    ResultWithJobSerializer,
    TokensRelayedSerializer,
    TokensSerializer,
    TutorialCompleteSerializer,
    leased_job,
    plain_poll,
    plain_result,
    plain_results,
)
from jobs.api.serializers import JobSerializer, ResultAcceptedSerializer
from jobs.filters import JobFilter
from jobs.models import Job
from miners import services as miner_services
from miners.api.views import ERRORS, MINER_ID_HEADER, MinerView, named_miner_id
from miners.models import Miner

LEASE_CONFLICT = {409: OpenApiResponse(description="This miner does not hold the job's current lease")}


# A miner reporting on a job: without a miner named, the job tells which of the caller's miners
# speaks. (A comment, not a docstring: the schema would take it for each operation's description.)
class JobReportView(MinerView):
    def miner_for_job(self, job_id) -> Miner:
        """The speaking miner; without a name, the caller's miner that holds the job."""
        if named_miner_id(self.request):
            return self.miner()
        job = Job.objects.select_related("miner").filter(pk=job_id).first()
        if job is None:
            raise NotFound("Job not found.", code="JOB_NOT_FOUND")
        if job.miner is not None and (job.miner.owner_id == self.request.user.pk or is_admin(self.request)):
            return job.miner
        return self.miner()

    def accept_result(self, *, job_id, miner: Miner, data: dict) -> Response:
        completion = services.job_complete(
            job_id=job_id,
            miner=miner,
            result=data["result"],
            metrics=data.get("metrics"),
            lease_token=data.get("lease_token") or None,
        )
        # The shape of ResultAcceptedSerializer, built directly: miners post results all the time.
        receipt = completion.receipt.document if completion.receipt else None
        return Response({"status": "ok", "job_status": completion.job.status, "receipt": receipt})


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
        asked = plain_poll(params)
        if asked is None:
            poll = PollSerializer(data=params)
            poll.is_valid(raise_exception=True)
            asked = poll.validated_data
        max_jobs = asked["max_jobs"]
        wait = min(asked["max_wait_seconds"], settings.MINER_MAX_POLL_WAIT_SECONDS)
        miner = self.miner()
        miner_services.miner_touch(miner=miner)
        jobs = services.job_claim_waiting(miner=miner, limit=max_jobs, wait_seconds=wait)
        services.leases_keep(jobs)  # their results come back on this miner's connection, to this process
        if not jobs:
            return Response(status=status.HTTP_204_NO_CONTENT)
        if max_jobs == 1:
            return Response(leased_job(jobs[0]))
        return Response({"jobs": [leased_job(job) for job in jobs]})


class TokensView(MinerView):
    """Tokens as the miner decodes them, before the result: relayed to ``ws/jobs/<id>/`` and the
    OpenAI-compatible streams."""

    @extend_schema(
        summary="Stream the output of running jobs",
        request=TokensSerializer,
        parameters=[MINER_ID_HEADER],
        responses={200: TokensRelayedSerializer, **ERRORS},
    )
    def post(self, request):
        submitted = TokensSerializer(data=request.data)
        submitted.is_valid(raise_exception=True)
        pieces = submitted.pieces()
        refused = services.job_tokens_relay(miner=self.miner(), pieces=pieces)
        relayed = sum(1 for piece in pieces if piece.job_id not in refused)
        return Response({"status": "ok", "relayed": relayed, "refused_jobs": sorted(refused)})


class ResultView(JobReportView):
    @extend_schema(
        summary="Submit a job's result",
        request=ResultSerializer,
        parameters=[MINER_ID_HEADER],
        responses={200: ResultAcceptedSerializer, **LEASE_CONFLICT, **ERRORS},
    )
    def post(self, request, job_id):
        data = plain_result(request.data)
        if data is None:
            submitted = ResultSerializer(data=request.data)
            submitted.is_valid(raise_exception=True)
            data = submitted.validated_data
        return self.accept_result(job_id=job_id, miner=self.miner_for_job(job_id), data=data)


class ResultsView(MinerView):
    """Several results in one request: each job completes (or fails, as its result says) as if
    posted alone, and is answered in the same order; a job the miner does not hold the lease of
    changes nothing and is answered with its error, the others going on."""

    @extend_schema(
        summary="Submit the results of several jobs",
        request=ResultsSerializer,
        parameters=[MINER_ID_HEADER],
        responses={200: ResultsAcceptedSerializer, **ERRORS},
    )
    def post(self, request):
        results = plain_results(request.data)
        if results is None:
            submitted = ResultsSerializer(data=request.data)
            submitted.is_valid(raise_exception=True)
            results = submitted.validated_data["results"]
        miner = self.miner()
        outcomes = [
            services.Outcome(
                job_id=str(result["job_id"]),
                result=result["result"],
                metrics=result.get("metrics") or {},
                lease_token=result.get("lease_token") or None,
            )
            for result in results
        ]
        done = {
            str(completion.job.pk): completion for completion in services.jobs_complete(miner=miner, outcomes=outcomes)
        }
        answers = []
        for outcome in outcomes:
            completion = done.get(outcome.job_id)
            if completion is None:
                refusal = services.lease_refusal(job_id=outcome.job_id, miner=miner, lease_token=outcome.lease_token)
                answers.append(
                    {"job_id": outcome.job_id, "status": "error", "error_code": refusal.code, "detail": refusal.detail}
                )
                continue
            receipt = completion.receipt.document if completion.receipt else None
            answers.append(
                {"job_id": outcome.job_id, "status": "ok", "job_status": completion.job.status, "receipt": receipt}
            )
        return Response({"status": "ok", "results": answers})


class LegacyResultView(JobReportView):
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


class FailView(JobReportView):
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
        services.job_fail(
            job_id=job_id,
            miner=self.miner_for_job(job_id),
            error_code=data["error_code"],
            error_message=data["error_message"],
            lease_token=data.get("lease_token") or None,
        )
        return Response({"status": "ok"})


class MinerJobsView(MinerView, generics.GenericAPIView):
    """A miner's jobs, newest first. GET and POST alike: the AITBC CLI has sent both."""

    queryset = Job.objects.none()
    serializer_class = JobSerializer
    pagination_class = ItemsLimitOffsetPagination
    filter_backends = [DjangoFilterBackend]
    filterset_class = JobFilter

    @extend_schema(summary="List a miner's jobs", responses={200: JobSerializer(many=True), **ERRORS})
    def get(self, request, miner_id):
        return self._list(miner_id)

    @extend_schema(summary="List a miner's jobs", request=None, responses={200: JobSerializer(many=True), **ERRORS})
    def post(self, request, miner_id):
        return self._list(miner_id)

    def _list(self, miner_id) -> Response:
        jobs = self.filter_queryset(selectors.jobs_of_miner(miner=self.miner(miner_id)))
        page = self.paginate_queryset(jobs)
        return self.get_paginated_response(JobSerializer(page, many=True).data)


class MinerEarningsView(MinerView):
    """GET and POST alike: the AITBC CLI has sent both."""

    @extend_schema(summary="A miner's work and earnings", responses={200: EarningsSerializer, **ERRORS})
    def get(self, request, miner_id):
        return self._earnings(miner_id)

    @extend_schema(summary="A miner's work and earnings", request=None, responses={200: EarningsSerializer, **ERRORS})
    def post(self, request, miner_id):
        return self._earnings(miner_id)

    def _earnings(self, miner_id) -> Response:
        miner = self.miner(miner_id)
        return Response(
            EarningsSerializer({"miner_id": miner.miner_id, **selectors.miner_work_summary(miner=miner)}).data
        )


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
        miner_services.miner_touch(miner=miner)
        jobs = (
            selectors.claimable_jobs(miner=miner, now=timezone.now())
            .select_related("miner", "payment")
            .order_by("rank_at")
        )
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
        miner_services.miner_touch(miner=miner)
        job = services.job_claim_specific(miner=miner, job_id=job_id)
        return Response(leased_job(job))


class CompleteView(JobReportView):
    @extend_schema(
        summary="Complete a claimed job",
        request=TutorialCompleteSerializer,
        responses={200: ResultAcceptedSerializer, **LEASE_CONFLICT, **ERRORS},
    )
    def post(self, request, job_id):
        submitted = TutorialCompleteSerializer(data=request.data)
        submitted.is_valid(raise_exception=True)
        return self.accept_result(job_id=job_id, miner=self.miner_for_job(job_id), data=submitted.validated_data)
