import json

from django.conf import settings
from drf_spectacular.utils import OpenApiExample, extend_schema_field, extend_schema_serializer
from rest_framework import serializers

from catalog import payloads
from catalog.payloads import MAX_EMBEDDING_INPUTS, MAX_MESSAGES
from catalog.selectors import catalog_entry, default_model
from core.api.formats import iso_datetime
from core.errors import Invalid, ServiceError
from jobs.agreement import AGREEMENTS, DEFAULT_SEMANTIC_THRESHOLD, EXACT, verification_request
from jobs.models import AITBC_STATE, JobPriority, JobStatus, JobType
from jobs.selectors import QUEUE_POSITION_CAP
from payments.api.serializers import aitbc_currency


class ReceiptSignatureSerializer(serializers.Serializer):
    alg = serializers.CharField(help_text="Ed25519")
    key_id = serializers.CharField(help_text="URL-safe base64 public key, no padding")
    sig = serializers.CharField(help_text="URL-safe base64 signature, no padding")


class ReceiptDocumentSerializer(serializers.Serializer):
    """A receipt as signed (canonical JSON, null fields omitted), with attestations given since."""

    version = serializers.CharField()
    receipt_id = serializers.CharField()
    job_id = serializers.CharField()
    provider = serializers.CharField(help_text="The miner's id")
    client = serializers.CharField(
        required=False,
        help_text="The client's pseudonym: clt_ and 32 hex digits, the same on all its receipts, not to be told "
        "from its name without the server's secret (receipts signed before commitments: its username)",
    )
    status = serializers.CharField()
    units = serializers.IntegerField()
    unit_type = serializers.CharField()
    unit_price = serializers.CharField(required=False, help_text="Decimal as a string")
    price = serializers.CharField(required=False, help_text="What the client paid; decimal as a string")
    started_at = serializers.IntegerField(help_text="Epoch seconds")
    completed_at = serializers.IntegerField(help_text="Epoch seconds")
    metadata = serializers.DictField(
        help_text="model, attempt, commitment, input_sha256, output_sha256, usage. With commitment "
        '"hmac-sha256", input_sha256 and output_sha256 are HMAC-SHA256 of the canonical JSON of the job\'s payload '
        "and result under the salts of the receipt's opening, which the job's client is given; without it (receipts "
        "signed before commitments) they are plain SHA-256 digests"
    )
    signature = ReceiptSignatureSerializer()
    attestations = ReceiptSignatureSerializer(
        many=True, required=False, help_text="Co-signatures of the payload (without signature and attestations)"
    )
    withheld = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="Public explorer only: fields of a receipt signed before commitments that it does not show "
        "(client, metadata.input_sha256, metadata.output_sha256); the signature verifies over the whole receipt only",
    )

    def to_representation(self, document):
        # Served exactly as signed; the fields describe it. Copied field by field, its keys would be
        # reordered and any key a field does not name dropped, and its signature would not check.
        return document


class ReceiptOpeningSerializer(serializers.Serializer):
    """The salts that open a receipt's commitments: whoever holds them and the job's payload and
    result can check the receipt against them. Given to the job's client alone."""

    input_salt = serializers.RegexField(r"^[0-9a-f]+$", help_text="hex: the key of metadata.input_sha256")
    output_salt = serializers.RegexField(r"^[0-9a-f]+$", help_text="hex: the key of metadata.output_sha256")


# Spellings existing clients send for the job types.
JOB_TYPE_ALIASES = {
    "inference": JobType.INFERENCE,
    "llm_inference": JobType.INFERENCE,
    "text-generation": JobType.INFERENCE,
    "text_generation": JobType.INFERENCE,
    "completion": JobType.INFERENCE,
    "chat": JobType.CHAT,
    "embedding": JobType.EMBEDDING,
    "embeddings": JobType.EMBEDDING,
}
PRIORITY_NAMES = {label: value for value, label in JobPriority.choices}
# Top-level fields of a submission that are not part of the job's payload (body B).
_ENVELOPE_FIELDS = {
    "payload",
    "constraints",
    "ttl_seconds",
    "priority",
    "payment_amount",
    "payment_currency",
    "max_attempts",
    "verification",
    "min_reputation",
}


class ConstraintsSerializer(serializers.Serializer):
    models = serializers.ListField(child=serializers.CharField(max_length=200), required=False, max_length=64)
    gpu = serializers.CharField(max_length=200, required=False, allow_blank=True)
    min_vram_gb = serializers.FloatField(required=False, min_value=0)
    cuda = serializers.CharField(max_length=16, required=False, allow_blank=True)
    region = serializers.CharField(max_length=64, required=False, allow_blank=True)
    max_price = serializers.DecimalField(max_digits=18, decimal_places=8, required=False, min_value=0)

    def to_internal_value(self, data):
        if isinstance(data, dict) and isinstance(data.get("cuda"), (int, float)):
            data = {**data, "cuda": str(data["cuda"])}
        super().to_internal_value(data)
        # Stored as sent (valid, and JSON as the client wrote it), so clients see them back unchanged.
        return dict(data)


@extend_schema_field(
    {
        "type": "object",
        "description": "Run the job as `redundancy` attempts on miners of distinct owners; the answer a majority "
        "of them agree on is the job's result. `agreement`: `exact` (the default: the same text once whitespace "
        "is normalised; for greedy decoding, temperature 0 with a seed) or `semantic` (embeddings: cosine "
        "similarity; sampled text: Jaccard similarity of the word sets) with its `threshold` (above 0, at most 1; "
        f"default {DEFAULT_SEMANTIC_THRESHOLD}). Each attempt's price is held in escrow; only the attempts that "
        "agreed are paid.",
        "properties": {
            "redundancy": {"type": "integer", "minimum": 2, "maximum": settings.VERIFICATION_MAX_REDUNDANCY},
            "agreement": {"type": "string", "enum": list(AGREEMENTS), "default": EXACT},
            "threshold": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1},
        },
        "required": ["redundancy"],
        "additionalProperties": False,
    }
)
class VerificationField(serializers.JSONField):
    """A job's ``verification``, checked by ``jobs.agreement.verification_request``."""

    def to_internal_value(self, data):
        return verification_request(super().to_internal_value(data))


@extend_schema_field({"type": "string", "minLength": 1, "maxLength": settings.JOB_MAX_INPUT_CHARS})
class PromptField(serializers.CharField):
    """A prompt; its length is checked with the job's other text (``JOB_MAX_INPUT_CHARS``)."""


# The parameters' shapes, for the schema and for reading numbers; the job's payload is then
# checked whole by ``catalog.payloads``, the rules the engine runs by.
class GenerationParamsSerializer(serializers.Serializer):
    max_tokens = serializers.IntegerField(required=False, min_value=1, max_value=payloads.MAX_TOKENS)
    temperature = serializers.FloatField(required=False, min_value=0, max_value=payloads.MAX_TEMPERATURE)
    top_p = serializers.FloatField(required=False, min_value=0, max_value=1, help_text="Greater than 0.")
    seed = serializers.IntegerField(required=False, min_value=0, max_value=payloads.MAX_SEED)
    stop = serializers.JSONField(
        required=False, help_text=f"A non-empty string or a list of at most {payloads.MAX_STOP_STRINGS}."
    )

    def to_internal_value(self, data):
        validated = super().to_internal_value(data)
        return {**{k: v for k, v in data.items() if k not in self.fields}, **validated}


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "AITBC CLI",
            value={
                "payload": {"type": "inference", "prompt": "hi", "model": "llama3.2"},
                "constraints": {},
                "ttl_seconds": 900,
            },
            request_only=True,
        ),
        OpenApiExample(
            "Tutorial client",
            value={"prompt": "Explain quantum computing", "model": "llama3.2", "params": {"max_tokens": 256}},
            request_only=True,
        ),
    ]
)
class JobSubmitSerializer(serializers.Serializer):
    """Either ``{"payload": {...}, "constraints", "ttl_seconds"}`` or ``{"prompt", "model", "params"}``."""

    payload = serializers.DictField(required=False, help_text="The job: type, model, prompt/messages/input, params.")
    prompt = PromptField(required=False, allow_blank=False, trim_whitespace=False)
    messages = serializers.ListField(
        child=serializers.DictField(), required=False, allow_empty=False, max_length=MAX_MESSAGES
    )
    input = serializers.JSONField(
        required=False,
        help_text=f"Text or list of up to {MAX_EMBEDDING_INPUTS} texts to embed, "
        f"at most {settings.JOB_MAX_INPUT_CHARS} characters together.",
    )
    model = serializers.CharField(
        required=False, max_length=200, help_text="Absent: JOB_DEFAULT_MODEL (the catalog's chat model)."
    )
    type = serializers.CharField(
        required=False,
        max_length=32,
        help_text="inference (the default), chat or embedding (implied by an embedding model, or by input alone).",
    )
    params = GenerationParamsSerializer(required=False)
    constraints = ConstraintsSerializer(required=False)
    ttl_seconds = serializers.IntegerField(required=False, min_value=1)
    priority = serializers.JSONField(required=False, help_text="urgent, critical, high, normal (default) or low.")
    max_attempts = serializers.IntegerField(required=False, min_value=1, max_value=10)
    payment_amount = serializers.DecimalField(required=False, max_digits=18, decimal_places=8, min_value=0)
    payment_currency = serializers.CharField(required=False, max_length=16)
    verification = VerificationField(
        required=False, allow_null=True, help_text="null, or absent: an ordinary job, run once, unverified."
    )
    min_reputation = serializers.FloatField(
        required=False,
        min_value=0,
        max_value=1,
        help_text="Only miners whose reputation (the share of their attempts in the last 7 days that completed "
        "with an answer not found wrong) is at least this may run the job.",
    )

    def validate_ttl_seconds(self, value):
        if value > settings.JOB_MAX_TTL_SECONDS:
            raise serializers.ValidationError(
                f"Ensure this value is less than or equal to {settings.JOB_MAX_TTL_SECONDS}."
            )
        return value

    def validate_priority(self, value):
        if isinstance(value, str) and value.lower() in PRIORITY_NAMES:
            return PRIORITY_NAMES[value.lower()]
        if isinstance(value, int) and not isinstance(value, bool) and value in JobPriority.values:
            return value
        raise serializers.ValidationError("Must be one of urgent, critical, high, normal, low.")

    def validate(self, attrs):
        return submission(attrs, self.initial_data)

    def validate_payment_currency(self, value):
        return aitbc_currency(value)


def submission(attrs: dict, raw: dict) -> dict:
    """What ``job_submit`` is called with, from the submission's fields (``attrs``, validated one by
    one) and its body as sent (``raw``)."""
    if "payload" in attrs:
        payload = dict(attrs["payload"])
    else:
        payload = {k: v for k, v in raw.items() if k not in _ENVELOPE_FIELDS}
    if "params" in payload and not isinstance(payload["params"], dict):
        raise serializers.ValidationError({"params": "Must be an object."})
    if isinstance(payload.get("params"), dict):
        params = GenerationParamsSerializer(data=payload["params"])
        params.is_valid(raise_exception=True)
        payload["params"] = params.validated_data

    constraints = attrs.get("constraints", {})
    model = payload.get("model") or (constraints.get("models") or [None])[0]
    job_type = payload.get("type") or raw.get("type") or _implied_type(model, payload)
    if not isinstance(job_type, str) or job_type.lower() not in JOB_TYPE_ALIASES:
        raise Invalid(
            f"Unknown job type {job_type!r}; expected one of inference, chat, embedding.",
            code="INVALID_JOB_TYPE",
            errors={"type": [f"Unknown job type {job_type!r}."]},
        )
    job_type = JOB_TYPE_ALIASES[job_type.lower()]
    payload["type"] = job_type

    if model is None:
        # The AITBC CLI's `client submit` without --model.
        model = default_model(embedding=job_type == JobType.EMBEDDING)
        if model is None:
            raise serializers.ValidationError({"model": "A model name is required: no default model is set."})
    if not isinstance(model, str) or not model.strip() or len(model) > 200:
        raise serializers.ValidationError({"model": "A model name is required (payload.model or model)."})
    payload["model"] = model = model.strip()
    try:
        payloads.check_payload(payload, max_input_chars=settings.JOB_MAX_INPUT_CHARS)
    except payloads.PayloadError as error:
        raise _payload_refused(error) from None
    if len(json.dumps(payload, ensure_ascii=False).encode()) > settings.JOB_MAX_PAYLOAD_BYTES:
        raise Invalid(
            f"The job's payload is larger than {settings.JOB_MAX_PAYLOAD_BYTES} bytes.", code="PAYLOAD_TOO_LARGE"
        )

    return {
        "job_type": job_type,
        "model": model,
        "payload": payload,
        "constraints": constraints,
        "ttl_seconds": attrs.get("ttl_seconds"),
        "priority": attrs.get("priority", JobPriority.NORMAL),
        "max_attempts": attrs.get("max_attempts"),
        "payment_amount": attrs.get("payment_amount"),
        "verification": attrs.get("verification"),
        "min_reputation": attrs.get("min_reputation"),
    }


def plain_submission(data) -> dict | None:
    """``JobSubmitSerializer``'s validated data for a body of the plain shapes clients send most
    (``{"payload": {...}, "ttl_seconds"?, "constraints": {}?}`` and ``{"prompt", "model"?,
    "params"?, "type"?}``), read without building the serializer and its nested ones: every
    submission sends one. None for anything else, and for a body the rules refuse: the serializer
    then reads it and words the errors."""
    if type(data) is not dict:
        return None
    if "payload" in data:
        if not data.keys() <= {"payload", "ttl_seconds", "constraints"} or type(data["payload"]) is not dict:
            return None
        if data.get("constraints", {}) != {} or type(data.get("constraints", {})) is not dict:
            return None
        ttl = data.get("ttl_seconds", 1)
        if not (type(ttl) is int and 1 <= ttl <= settings.JOB_MAX_TTL_SECONDS):  # null is refused too
            return None
        attrs = {"payload": data["payload"], **({"ttl_seconds": ttl} if "ttl_seconds" in data else {})}
        if "constraints" in data:
            attrs["constraints"] = {}
    else:
        if not data.keys() <= {"prompt", "model", "params", "type"} or not _plain_text(data.get("prompt"), strip=False):
            return None
        if any(name in data and not _plain_text(data[name], max_length=length) for name, length in _PLAIN_NAMES):
            return None
        if "params" in data and type(data["params"]) is not dict:
            return None
        attrs = {}  # ``submission`` reads such a job from the body itself
    try:
        return submission(attrs, data)
    except (serializers.ValidationError, ServiceError):
        return None


_PLAIN_NAMES = (("model", 200), ("type", 32))


def _plain_text(value, *, strip: bool = True, max_length: int | None = None) -> bool:
    """A string a ``CharField`` takes as it is: not empty, not trimmed (when it trims), not too long."""
    return (
        type(value) is str
        and value != ""
        and (not strip or value == value.strip())
        and (max_length is None or len(value) <= max_length)
    )


def _implied_type(model, payload: dict) -> str:
    """The type of a job that names none: an embedding job when its model is a catalog embedding
    model, or when it carries ``input`` and neither prompt nor messages; else text generation."""
    entry = catalog_entry(model) if isinstance(model, str) else None
    if entry is not None:
        return JobType.INFERENCE if entry.generates_text else JobType.EMBEDDING
    if "input" in payload and "prompt" not in payload and "messages" not in payload:
        return JobType.EMBEDDING
    return JobType.INFERENCE


def _payload_refused(error: payloads.PayloadError) -> Exception:
    """The API's answer to a payload the rules refuse: a 422 naming the field at fault."""
    if error.code == "INPUT_TOO_LONG":
        return Invalid(error.message, code="INPUT_TOO_LONG", errors={error.field: [error.message]})
    if error.code == "INVALID_PARAMS":
        return serializers.ValidationError({"params": {error.field: [error.message]}})
    return serializers.ValidationError({error.field: error.message})


class VerificationViewSerializer(serializers.Serializer):
    redundancy = serializers.IntegerField()
    agreement = serializers.ChoiceField(choices=AGREEMENTS)
    threshold = serializers.FloatField(allow_null=True)


class JobSerializer(serializers.Serializer):
    """JobView: a job as clients see it. The fields describe the schema; ``to_representation``
    builds the same shape directly, since it runs on every submit and status poll."""

    job_id = serializers.CharField()
    status = serializers.ChoiceField(choices=JobStatus.choices)
    state = serializers.ChoiceField(choices=sorted(set(AITBC_STATE.values())), help_text="The status, AITBC spelling")
    type = serializers.ChoiceField(choices=JobType.choices)
    model = serializers.CharField()
    payload = serializers.DictField()
    constraints = serializers.DictField()
    priority = serializers.ChoiceField(choices=[label for _, label in JobPriority.choices])
    result = serializers.JSONField(allow_null=True)
    error = serializers.CharField(allow_null=True, help_text="The last attempt's error message")
    error_code = serializers.CharField(allow_blank=True)
    progress = serializers.FloatField(help_text="Percent")
    miner_id = serializers.CharField(allow_null=True)
    assigned_miner_id = serializers.CharField(allow_null=True)
    attempt = serializers.IntegerField()
    max_attempts = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    requested_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    completed_at = serializers.DateTimeField(allow_null=True)
    expires_at = serializers.DateTimeField(help_text="A job still queued then expires")
    ttl_seconds = serializers.IntegerField()
    queue_position = serializers.IntegerField(
        allow_null=True, help_text=f"While queued: 1 is next (counted up to {QUEUE_POSITION_CAP + 1})"
    )
    estimated_wait_seconds = serializers.FloatField(allow_null=True)
    is_possible = serializers.BooleanField(allow_null=True, help_text="While queued: can an online miner run it?")
    usage = serializers.DictField(help_text="prompt_tokens, completion_tokens, total_tokens, compute_ms, …")
    price = serializers.DecimalField(
        max_digits=24, decimal_places=8, allow_null=True, help_text="AITBC held in escrow at submission"
    )
    amount_charged = serializers.DecimalField(
        max_digits=24, decimal_places=8, allow_null=True, help_text="AITBC paid on completion (the rest refunded)"
    )
    payment_id = serializers.CharField(allow_null=True)
    payment_status = serializers.CharField(allow_null=True, help_text="escrowed, released or refunded")
    verification = VerificationViewSerializer(
        allow_null=True,
        help_text="A verified job's rule (null for others): it runs as attempts, their receipts listed with its own",
    )

    def to_representation(self, job):
        return job_view(job, outlook=self.context.get("outlook", {}).get(job.pk, {}))


_PRIORITY_LABELS = dict(JobPriority.choices)


def job_view(job, *, outlook: dict) -> dict:
    """What ``JobSerializer`` shows of ``job``, built directly: it runs on every submit, status
    poll and status event."""
    miner_id = job.miner.miner_id if job.miner_id else None
    queued = job.status == JobStatus.QUEUED
    return {
        "job_id": str(job.pk),
        "status": job.status,
        "state": job.state,
        "type": job.type,
        "model": job.model,
        "payload": job.payload,
        "constraints": job.constraints,
        "priority": _PRIORITY_LABELS.get(job.priority, job.priority),
        "result": job.result,
        "error": job.error_message or None,
        "error_code": job.error_code,
        "progress": job.progress,
        "miner_id": miner_id,
        "assigned_miner_id": miner_id,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "created_at": iso_datetime(job.created_at),
        "requested_at": iso_datetime(job.created_at),
        "started_at": iso_datetime(job.started_at),
        "completed_at": iso_datetime(job.completed_at),
        "expires_at": iso_datetime(job.expires_at),
        "ttl_seconds": job.ttl_seconds,
        "queue_position": getattr(job, "queue_position", None) if queued else None,
        "estimated_wait_seconds": outlook.get("estimated_wait_seconds"),
        "is_possible": outlook.get("is_possible"),
        "usage": job.usage,
        "price": decimal_text(job.price),
        "amount_charged": decimal_text(job.amount_charged),
        "payment_id": job.payment_id or None,
        "payment_status": job.payment_status or None,
        "verification": _verification_view(job.verification),
    }


def _verification_view(rule: dict) -> dict | None:
    if not rule:
        return None
    return {"redundancy": rule["redundancy"], "agreement": rule["agreement"], "threshold": rule.get("threshold")}


def decimal_text(value) -> str | None:
    return None if value is None else f"{value:.8f}"


class JobResultSerializer(serializers.Serializer):
    job_id = serializers.CharField()
    status = serializers.ChoiceField(choices=JobStatus.choices)
    state = serializers.CharField()
    result = serializers.JSONField(allow_null=True)
    error = serializers.CharField(allow_null=True)
    error_code = serializers.CharField(allow_blank=True)
    usage = serializers.DictField()
    completed_at = serializers.DateTimeField(allow_null=True)
    receipt = ReceiptDocumentSerializer(allow_null=True)
    receipt_opening = ReceiptOpeningSerializer(
        allow_null=True,
        help_text="The salts of the receipt's input and output commitments: yours to keep, and to give to whoever "
        "should check the receipt against this job's payload and result (null for a receipt signed before "
        "commitments, whose digests are plain SHA-256)",
    )


class ReceiptListSerializer(serializers.Serializer):
    items = ReceiptDocumentSerializer(many=True)
    openings = serializers.DictField(
        child=ReceiptOpeningSerializer(),
        help_text="The opening of each receipt of the page that has one, by receipt_id",
    )
    next_cursor = serializers.CharField(allow_null=True)


class ResultAcceptedSerializer(serializers.Serializer):
    status = serializers.CharField(default="ok")
    job_status = serializers.CharField(help_text="completed, or queued/failed when the result reported a failure")
    receipt = ReceiptDocumentSerializer(allow_null=True)
