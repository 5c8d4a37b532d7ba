"""Requests and responses of the miner work protocol (``jobs.api.miner_views``)."""

import math
import uuid

from rest_framework import serializers

from core.api.formats import iso_datetime
from jobs.selectors import REPUTATION_WINDOW
from jobs.services import StreamedText


class OkSerializer(serializers.Serializer):
    status = serializers.CharField(default="ok")


class HeartbeatSerializer(serializers.Serializer):
    inflight = serializers.IntegerField(required=False, min_value=0, max_value=1_000_000)
    status = serializers.CharField(required=False, max_length=32)
    metadata = serializers.DictField(required=False)


class PollSerializer(serializers.Serializer):
    max_wait_seconds = serializers.FloatField(required=False, min_value=0, default=0)
    max_jobs = serializers.IntegerField(required=False, min_value=1, max_value=256, default=1)


def _is_number(value) -> bool:
    """A JSON number a float holds: a finite float, or an int of at most 2**53."""
    return (type(value) is float and math.isfinite(value)) or (type(value) is int and abs(value) <= 2**53)


def plain_poll(data) -> dict | None:
    """``PollSerializer``'s validated data for a JSON body that is plainly valid, read without
    building the serializer (every poll sends one); None for anything else, which the serializer
    then validates and words the errors of."""
    if type(data) is not dict:
        return None
    wait, jobs = data.get("max_wait_seconds", 0), data.get("max_jobs", 1)
    if not (_is_number(wait) and wait >= 0 and type(jobs) is int and 1 <= jobs <= 256):
        return None
    return {"max_wait_seconds": float(wait), "max_jobs": jobs}


class LeasedJobSerializer(serializers.Serializer):
    """A job handed to a miner, with the lease it now holds."""

    job_id = serializers.CharField(source="id")
    type = serializers.CharField()
    model = serializers.CharField()
    payload = serializers.JSONField()
    constraints = serializers.JSONField()
    attempt = serializers.IntegerField()
    lease_token = serializers.CharField(help_text="Send it back with the result: it fences this attempt.")
    lease_expires_at = serializers.DateTimeField()

    def to_representation(self, job):
        return leased_job(job)


def leased_job(job) -> dict:
    """What ``LeasedJobSerializer`` shows of ``job``, built directly, without a serializer: every
    poll that gets work and every job pushed on ``ws/miners/``."""
    return {
        "job_id": str(job.pk),
        "type": job.type,
        "model": job.model,
        "payload": job.payload,
        "constraints": job.constraints,
        "attempt": job.attempt,
        "lease_token": job.lease_token,
        "lease_expires_at": iso_datetime(job.lease_expires_at),
    }


class LeasedJobBatchSerializer(serializers.Serializer):
    jobs = LeasedJobSerializer(many=True)


class ResultSerializer(serializers.Serializer):
    result = serializers.JSONField(help_text='The output. {"status": "failed", …} fails the attempt.')
    metrics = serializers.DictField(required=False, default=dict)
    signature = serializers.JSONField(required=False)
    lease_token = serializers.CharField(required=False, allow_blank=True, max_length=36)


class ResultWithJobSerializer(ResultSerializer):
    job_id = serializers.UUIDField()


def plain_result(data) -> dict | None:
    """``ResultSerializer``'s validated data for a JSON body that is plainly valid, read without
    building the serializer (every result sends one); None for anything else, which the serializer
    then validates and words the errors of. With ``job_id`` (``ResultWithJobSerializer``'s) too."""
    if type(data) is not dict or data.get("result") is None or data.get("signature", ...) is None:
        return None
    metrics, token = data.get("metrics", {}), data.get("lease_token", "")
    if type(metrics) is not dict or type(token) is not str or len(token) > 36 or token != token.strip():
        return None
    validated = {"result": data["result"], "metrics": metrics}
    if "signature" in data:
        validated["signature"] = data["signature"]
    if "lease_token" in data:
        validated["lease_token"] = token
    if "job_id" in data:
        try:
            validated["job_id"] = uuid.UUID(data["job_id"])
        except (TypeError, ValueError, AttributeError):
            return None
    return validated


def plain_results(data) -> list | None:
    """``ResultsSerializer``'s validated ``results`` for a body that is plainly valid, else None."""
    results = data.get("results") if type(data) is dict else None
    if type(results) is not list or not 1 <= len(results) <= 256:
        return None
    validated = [plain_result(result) if type(result) is dict and "job_id" in result else None for result in results]
    if None in validated or len({result["job_id"] for result in validated}) < len(validated):
        return None
    return validated


class ResultsSerializer(serializers.Serializer):
    """Results of several of the miner's jobs (a batch it polled with ``max_jobs``), in one request."""

    results = ResultWithJobSerializer(many=True, min_length=1, max_length=256)

    def validate_results(self, results):
        if len({result["job_id"] for result in results}) < len(results):
            raise serializers.ValidationError("Each job may appear once.")
        return results


class ResultOutcomeSerializer(serializers.Serializer):
    job_id = serializers.CharField()
    status = serializers.ChoiceField(
        choices=["ok", "error"], help_text="error: nothing changed for this job (see error_code)"
    )
    job_status = serializers.CharField(
        required=False, help_text="completed, or queued/failed when the result reported a failure"
    )
    receipt = serializers.DictField(required=False, allow_null=True, help_text="The signed receipt, as a result gets")
    error_code = serializers.CharField(required=False, help_text="LEASE_NOT_HELD or JOB_NOT_FOUND")
    detail = serializers.CharField(required=False)


class ResultsAcceptedSerializer(serializers.Serializer):
    status = serializers.CharField(default="ok")
    results = ResultOutcomeSerializer(many=True, help_text="One per result sent, in the same order")


class TutorialCompleteSerializer(ResultSerializer):
    miner_id = serializers.CharField(required=False, max_length=128)
    completed_at = serializers.DateTimeField(required=False)


class FailSerializer(serializers.Serializer):
    error_code = serializers.CharField(required=False, default="INFERENCE_FAILED", max_length=64)
    error_message = serializers.CharField(required=False, default="", allow_blank=True, max_length=10_000)
    metrics = serializers.DictField(required=False, default=dict)
    lease_token = serializers.CharField(required=False, allow_blank=True, max_length=36)


class StreamedTextSerializer(serializers.Serializer):
    job_id = serializers.UUIDField()
    index = serializers.IntegerField(
        min_value=0, max_value=10_000_000, help_text="The piece's place in the attempt's output, from 0."
    )
    text = serializers.CharField(allow_blank=True, trim_whitespace=False, max_length=100_000)
    lease_token = serializers.CharField(required=False, allow_blank=True, max_length=36)
    completion_tokens = serializers.IntegerField(
        required=False, min_value=0, max_value=10_000_000, help_text="Tokens generated so far (for progress)."
    )


class TokensSerializer(serializers.Serializer):
    """Pieces of output decoded since the last batch, of any of the miner's jobs, in order."""

    tokens = StreamedTextSerializer(many=True, max_length=4096)

    def pieces(self) -> list[StreamedText]:
        return [
            StreamedText(
                job_id=str(token["job_id"]),
                index=token["index"],
                text=token["text"],
                lease_token=token.get("lease_token") or None,
                completion_tokens=token.get("completion_tokens"),
            )
            for token in self.validated_data["tokens"]
        ]


class TokensRelayedSerializer(serializers.Serializer):
    status = serializers.CharField(default="ok")
    relayed = serializers.IntegerField(help_text="Pieces published to the jobs' subscribers.")
    refused_jobs = serializers.ListField(
        child=serializers.CharField(),
        help_text="Jobs this miner no longer runs under the lease sent (cancelled, re-queued, finished): stop "
        "streaming them.",
    )


class ClaimSerializer(serializers.Serializer):
    miner_id = serializers.CharField(required=False, max_length=128)


class EarningsSerializer(serializers.Serializer):
    miner_id = serializers.CharField()
    jobs_completed = serializers.IntegerField()
    jobs_running = serializers.IntegerField()
    units_served = serializers.IntegerField()
    earned = serializers.DecimalField(
        max_digits=24, decimal_places=8, help_text="AITBC paid to the owner for this miner's jobs"
    )
    reputation = serializers.FloatField(
        allow_null=True,
        help_text=f"Of the attempts the miner ended in the last {REPUTATION_WINDOW.days} days, the share that "
        "completed (0 to 1); null when it ended none",
    )
