"""``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings``: OpenAI's API over
the job queue, for its official clients unchanged (``base_url=<server>/v1``, a client key as
``api_key``).

The views are async: under daphne a request waits for its jobs on the event loop, holding no
thread and no REST worker, and ``stream: true`` answers as server-sent events as the miner
decodes. Served by a WSGI server (gunicorn), they still answer, but each waiting request holds a
worker and a stream arrives whole at the end: deployments route these paths to daphne.
"""

import inspect
import uuid
from collections.abc import Callable
from functools import partial

from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions
from rest_framework.views import APIView

from core.api.permissions import IsClient
from jobs.models import Job, JobStatus
from openai_compat import selectors, services, shapes
from openai_compat.api.serializers import (
    ChatCompletionCreateSerializer,
    ChatCompletionSerializer,
    CompletionCreateSerializer,
    CompletionSerializer,
    EmbeddingCreateSerializer,
    EmbeddingListSerializer,
    OpenAIErrorSerializer,
)
from openai_compat.errors import REQUEST_ERRORS, OpenAIError, as_openai_error
from openai_compat.streams import SUBSCRIBE_TIMEOUT_SECONDS, Ended, JobWatch, Started, Text, TimedOut, in_thread, sse

JOB_ID_HEADER = "X-AITBC-Job-Id"
RECEIPT_ID_HEADER = "X-AITBC-Receipt-Id"


def _response_headers(*, receipts: bool) -> list[OpenApiParameter]:
    headers = [
        OpenApiParameter(
            JOB_ID_HEADER, str, OpenApiParameter.HEADER, response=True,
            description="The request's job (comma-separated, one per choice): GET /v1/jobs/{id} and its receipt.",
        )
    ]  # fmt: skip
    if receipts:
        headers.append(
            OpenApiParameter(
                RECEIPT_ID_HEADER, str, OpenApiParameter.HEADER, response=[200],
                description="The signed receipt of each job (GET /v1/receipts/{id}).",
            )
        )  # fmt: skip
    return headers


ERRORS = {
    400: OpenApiResponse(OpenAIErrorSerializer, description="Invalid request (param names the field)"),
    401: OpenApiResponse(OpenAIErrorSerializer, description="No or invalid API key"),
    403: OpenApiResponse(OpenAIErrorSerializer, description="Not a client key"),
    404: OpenApiResponse(OpenAIErrorSerializer, description="model_not_found"),
    409: OpenApiResponse(OpenAIErrorSerializer, description="The job was cancelled meanwhile"),
    429: OpenApiResponse(
        OpenAIErrorSerializer, description="Rate limited, or the wallet is short (insufficient_quota)"
    ),
    502: OpenApiResponse(OpenAIErrorSerializer, description="The job failed on every attempt"),
    504: OpenApiResponse(
        OpenAIErrorSerializer,
        description="No miner took the job in time (OPENAI_QUEUE_TIMEOUT_SECONDS), or it ran past "
        "OPENAI_RESPONSE_TIMEOUT_SECONDS: error.job_ids names the jobs, which go on",
    ),
}
STREAM = OpenApiResponse(
    OpenApiTypes.STR,
    description="With stream: true, server-sent events: `data: <chunk JSON>` per piece of text, a choice's last "
    "chunk with its finish_reason (and its job_id and receipt_id), a usage chunk with "
    "stream_options.include_usage, then `data: [DONE]`",
)


class OpenAIView(APIView):
    """An async DRF view answering errors as OpenAI does. Authentication, permissions and rate
    limits are the API's own (a client key, as ``Authorization: Bearer``); for a POST they run in
    the same hop to a thread as the submit of its jobs (``submit``), before it."""

    permission_classes = [IsClient]
    http_method_names = ["post", "options"]

    async def dispatch(self, request, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        request = self.initialize_request(request, *args, **kwargs)
        self.request = request
        self.headers = self.default_response_headers
        try:
            if request.method != "POST":
                await in_thread(self._initial, request=request, args=args, kwargs=kwargs)
            if request.method.lower() not in self.http_method_names:
                raise exceptions.MethodNotAllowed(request.method)
            response = getattr(self, request.method.lower())(request, *args, **kwargs)
            if inspect.isawaitable(response):
                response = await response
        except Exception as exc:
            response = as_openai_error(exc).response()
        self.response = self.finalize_response(request, response, *args, **kwargs)
        return self.response

    def _initial(self, *, request, args, kwargs) -> None:
        self.initial(request, *args, **kwargs)

    def perform_content_negotiation(self, request, force=False):
        # Streaming clients may accept text/event-stream only; the answer's type is the view's.
        return super().perform_content_negotiation(request, force=True)

    async def submit(
        self, request, read: Callable[[], shapes.JobsRequest]
    ) -> tuple[shapes.JobsRequest, list[Job], JobWatch]:
        """The jobs ``read()`` makes of the request's body, queued, already followed: the watch
        starts first, so it hears everything a miner streams from the first piece (what this
        process publishes at once; the jobs are queued once their groups are joined, which goes
        on while the request is authenticated; close it when done). Authentication, permissions
        and rate limits run in the submit's hop to a thread, before it, and come first: an
        anonymous request with a bad body is a 401."""
        try:
            jobs_request, refusal = read(), None
        except Exception as error:
            jobs_request, refusal = None, error
        job_ids = [uuid.uuid4() for _ in jobs_request.payloads] if jobs_request is not None else []
        watch = JobWatch(
            [str(job_id) for job_id in job_ids],
            queue_timeout=settings.OPENAI_QUEUE_TIMEOUT_SECONDS,
            response_timeout=settings.OPENAI_RESPONSE_TIMEOUT_SECONDS,
            fresh=True,
        )
        if job_ids:
            await watch.__aenter__()
        try:
            jobs = await in_thread(
                self._checked_submit,
                request=request,
                jobs_request=jobs_request,
                refusal=refusal,
                job_ids=job_ids,
                watch=watch,
            )
        except BaseException:
            await watch.__aexit__(None, None, None)
            raise
        return jobs_request, jobs, watch

    def _checked_submit(
        self, *, request, jobs_request, refusal: Exception | None, job_ids: list, watch: JobWatch
    ) -> list[Job]:
        self.initial(request, *self.args, **self.kwargs)
        if refusal is not None:
            raise refusal
        # An event another process sends before the watch joined the jobs' groups would be lost.
        watch.joined.wait(SUBSCRIBE_TIMEOUT_SECONDS + 1)
        return services.request_jobs_submit(client=request.user, request=jobs_request, job_ids=job_ids)

    async def wait(self, jobs: list[Job], watch: JobWatch) -> tuple[list[Job], dict]:
        """The jobs once ended, completed, with the headers naming them and their receipts."""
        job_ids = watch.job_ids
        timed_out = None
        try:
            async for update in watch.updates():
                timed_out = update if isinstance(update, TimedOut) else None
        finally:
            await watch.__aexit__(None, None, None)
        if timed_out is not None:
            raise _timed_out(timed_out, job_ids)
        finished, receipt_ids = await in_thread(selectors.jobs_with_receipts, job_ids=job_ids)
        for job in finished:
            failure = _failure(job, job_ids)
            if failure is not None:
                raise failure
        headers = {JOB_ID_HEADER: ", ".join(job_ids), RECEIPT_ID_HEADER: ", ".join(filter(None, receipt_ids))}
        return finished, headers


class GenerationView(OpenAIView):
    request_serializer: type
    to_jobs_request = staticmethod(shapes.chat_request)
    to_answer = staticmethod(shapes.chat_completion)

    async def post(self, request):
        jobs_request, jobs, watch = await self.submit(request, partial(self.read, request))
        if jobs_request.stream:
            return await self.stream(request, jobs_request, jobs, watch)
        finished, headers = await self.wait(jobs, watch)
        return JsonResponse(self.to_answer(jobs_request, finished), headers=headers)

    def read(self, request) -> shapes.JobsRequest:
        submitted = self.request_serializer(data=request.data)
        submitted.is_valid(raise_exception=True)
        shapes.refuse_unsupported(request.data)
        return self.to_jobs_request(_plain(submitted.validated_data))

    async def stream(self, request, jobs_request: shapes.JobsRequest, jobs: list[Job], watch: JobWatch):
        """Server-sent events, begun once a miner took every job: until then the answer can still
        be an error with a status (no miner in time is a 504 naming the jobs)."""
        job_ids = watch.job_ids
        updates = watch.updates()
        early, begun = [], set()
        try:
            async for update in updates:
                if isinstance(update, TimedOut):
                    raise _timed_out(update, job_ids)
                early.append(update)
                begun.add(update.job_id)
                if begun >= set(job_ids):
                    break
            if all(any(isinstance(u, Ended) and u.job_id == job_id for u in early) for job_id in job_ids):
                # Every job ended before the stream began: a failure is still an error with its status.
                finished, _ = await in_thread(selectors.jobs_with_receipts, job_ids=job_ids)
                for job in finished:
                    failure = _failure(job, job_ids)
                    if failure is not None:
                        raise failure
        except BaseException:
            await updates.aclose()
            await watch.__aexit__(None, None, None)
            raise
        stream_id = shapes.response_id(jobs_request, jobs)
        events = _events(jobs_request, stream_id, job_ids, watch, updates, early)
        headers = {JOB_ID_HEADER: ", ".join(job_ids), "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        if isinstance(request._request, ASGIRequest):
            return StreamingHttpResponse(events, content_type="text/event-stream", headers=headers)
        # A WSGI server can't send as it goes: the same events, all at once.
        return HttpResponse(
            b"".join([part async for part in events]), content_type="text/event-stream", headers=headers
        )


class ChatCompletionsView(GenerationView):
    request_serializer = ChatCompletionCreateSerializer

    @extend_schema(
        operation_id="chat_completions_create",
        summary="Chat completion (OpenAI-compatible)",
        tags=["openai"],
        request=ChatCompletionCreateSerializer,
        responses={
            (200, "application/json"): ChatCompletionSerializer,
            (200, "text/event-stream"): STREAM,
            **ERRORS,
        },
        parameters=_response_headers(receipts=True),
    )
    async def post(self, request):
        return await super().post(request)


class CompletionsView(GenerationView):
    request_serializer = CompletionCreateSerializer
    to_jobs_request = staticmethod(shapes.completion_request)
    to_answer = staticmethod(shapes.text_completion)

    @extend_schema(
        operation_id="completions_create",
        summary="Text completion (OpenAI-compatible)",
        tags=["openai"],
        request=CompletionCreateSerializer,
        responses={(200, "application/json"): CompletionSerializer, (200, "text/event-stream"): STREAM, **ERRORS},
        parameters=_response_headers(receipts=True),
    )
    async def post(self, request):
        return await super().post(request)


class EmbeddingsView(OpenAIView):
    @extend_schema(
        operation_id="embeddings_create",
        summary="Embeddings (OpenAI-compatible)",
        tags=["openai"],
        request=EmbeddingCreateSerializer,
        responses={200: EmbeddingListSerializer, **ERRORS},
        parameters=_response_headers(receipts=True),
    )
    async def post(self, request):
        read: dict = {}

        def embedding_request() -> shapes.JobsRequest:
            submitted = EmbeddingCreateSerializer(data=request.data)
            submitted.is_valid(raise_exception=True)
            read.update(_plain(submitted.validated_data))
            return shapes.embedding_request(read)

        jobs_request, jobs, watch = await self.submit(request, embedding_request)
        finished, headers = await self.wait(jobs, watch)
        answer = shapes.embedding_list(jobs_request, finished[0], encoding_format=read["encoding_format"])
        return JsonResponse(answer, headers=headers)


async def _events(jobs_request, stream_id: str, job_ids: list[str], watch: JobWatch, updates, early: list):
    """The stream's events: each choice's role, its text as decoded, its end; the usage; [DONE]."""
    choice_of = {job_id: index for index, job_id in enumerate(job_ids)}
    finished: dict[str, Job] = {}

    async def everything():
        for update in early:
            yield update
        async for update in updates:
            yield update

    try:
        if jobs_request.kind == "chat.completion":
            for index in range(len(job_ids)):
                yield sse(shapes.chunk(jobs_request, stream_id, index=index, first=True))
        async for update in everything():
            if isinstance(update, Text):
                yield sse(shapes.chunk(jobs_request, stream_id, index=choice_of[update.job_id], text=update.text))
            elif isinstance(update, Ended):
                [job], [receipt_id] = await in_thread(selectors.jobs_with_receipts, job_ids=[update.job_id])
                failure = _failure(job, job_ids)
                if failure is not None:
                    yield sse(failure.body())
                    return
                index = choice_of[update.job_id]
                rest = watch.choices[update.job_id].beyond_sent(shapes.result_text(job.result))
                if rest:
                    yield sse(shapes.chunk(jobs_request, stream_id, index=index, text=rest))
                last = shapes.chunk(jobs_request, stream_id, index=index, finish=shapes.finish_reason(job.result))
                yield sse({**last, "job_id": update.job_id, "receipt_id": receipt_id})
                finished[update.job_id] = job
            elif isinstance(update, TimedOut):
                yield sse(_timed_out(update, job_ids).body())
                return
            elif not isinstance(update, Started):
                raise TypeError(f"unexpected update {update!r}")
        if jobs_request.include_usage:
            yield sse(shapes.usage_chunk(jobs_request, stream_id, [finished[job_id] for job_id in job_ids]))
        yield sse("[DONE]")
    finally:
        await updates.aclose()
        await watch.__aexit__(None, None, None)


def _timed_out(timed_out: TimedOut, job_ids: list[str]) -> OpenAIError:
    waiting = ", ".join(timed_out.waiting)
    if timed_out.queued:
        what = f"No miner took job {waiting} within {settings.OPENAI_QUEUE_TIMEOUT_SECONDS} s; it stays queued"
    else:
        what = f"Job {waiting} did not finish within {settings.OPENAI_RESPONSE_TIMEOUT_SECONDS} s; it goes on"
    return OpenAIError(
        f"{what}: fetch its result later from /v1/jobs/<job_id>/result.",
        status=504, type="timeout", code="job_pending",
        headers={JOB_ID_HEADER: ", ".join(job_ids), "X-Should-Retry": "false"}, extra={"job_ids": job_ids},
    )  # fmt: skip


def _failure(job: Job, job_ids: list[str]) -> OpenAIError | None:
    """The error a job that ended without completing answers, None for a completed one."""
    headers = {JOB_ID_HEADER: ", ".join(job_ids), "X-Should-Retry": "false"}
    if job.status == JobStatus.COMPLETED:
        return None
    if job.status == JobStatus.CANCELLED:
        return OpenAIError(f"Job {job.pk} was cancelled.", status=409, code="job_cancelled", headers=headers)
    if job.status == JobStatus.EXPIRED:
        return OpenAIError(
            f"No miner took job {job.pk} before it expired.", status=504, type="timeout", code="job_expired",
            headers=headers,
        )  # fmt: skip
    if job.error_code in REQUEST_ERRORS:
        return OpenAIError(job.error_message, status=400, code=REQUEST_ERRORS[job.error_code], headers=headers)
    return OpenAIError(
        f"Job {job.pk} failed: {job.error_message or job.error_code}",
        status=502, type="server_error", code=(job.error_code or "job_failed").lower(), headers=headers,
    )  # fmt: skip


def _plain(value):
    """Validated data as plain dicts and lists (the job payload is stored as JSON)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value
