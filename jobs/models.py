import json
import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.functional import cached_property

from payments.models import Payment, PaymentStatus


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    EXPIRED = "expired", "Expired"


JobStatus.ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
JobStatus.TERMINAL = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED)

# The AITBC spelling of each status, served as ``state``.
AITBC_STATE = {
    JobStatus.QUEUED: "QUEUED",
    JobStatus.RUNNING: "RUNNING",
    JobStatus.COMPLETED: "COMPLETED",
    JobStatus.FAILED: "FAILED",
    JobStatus.CANCELLED: "CANCELED",
    JobStatus.EXPIRED: "EXPIRED",
}


class JobType(models.TextChoices):
    INFERENCE = "inference", "Inference (text generation)"
    CHAT = "chat", "Chat"
    EMBEDDING = "embedding", "Embedding"
    # An agent's task (``agents``): queued for the model ``AGENT_TASK_MODEL``, which only agents serve.
    TASK = "task", "Agent task"


class JobPriority(models.IntegerChoices):
    LOW = 0, "low"
    NORMAL = 1, "normal"
    HIGH = 2, "high"
    CRITICAL = 3, "critical"
    URGENT = 4, "urgent"


class Job(models.Model):
    """An inference job, from submission to its terminal state.

    Queue order is ``rank_at``: the submission time moved earlier by the job's priority
    (one level per ``JOB_PRIORITY_AGEING_SECONDS``). A waiting job therefore overtakes
    newer jobs of higher priority once it has waited long enough, so nothing starves, and
    the queue is one indexed column.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Looked up through ``job_client_created_idx`` (client, created_at): no index of its own, one
    # fewer to write on every change of status.
    client = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="jobs", db_index=False)
    type = models.CharField(max_length=16, choices=JobType.choices, default=JobType.INFERENCE)
    model = models.CharField(max_length=200)
    payload = models.JSONField(default=dict)
    constraints = models.JSONField(default=dict, blank=True)
    priority = models.PositiveSmallIntegerField(choices=JobPriority.choices, default=JobPriority.NORMAL)
    rank_at = models.DateTimeField(editable=False)

    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    ttl_seconds = models.PositiveIntegerField()
    expires_at = models.DateTimeField(help_text="A job still queued at this time expires.")

    # Constraints, denormalised so that claims match them in SQL.
    req_gpu = models.CharField(max_length=200, blank=True)
    req_min_vram_gb = models.FloatField(null=True, blank=True)
    req_cuda_code = models.PositiveIntegerField(null=True, blank=True)
    req_region = models.CharField(max_length=64, blank=True)
    req_max_price = models.DecimalField(max_digits=18, decimal_places=8, null=True, blank=True)
    # A job pinned to one miner is offered to that miner only (a verified job's attempts, canaries).
    req_miner = models.ForeignKey(
        "miners.Miner", on_delete=models.PROTECT, null=True, blank=True, related_name="+", db_index=False
    )
    # Only a miner whose cached reputation (``Miner.reputation_score``) is at least this may claim the job.
    req_min_reputation = models.FloatField(null=True, blank=True)

    # Verification: a verified job (``verification`` set: redundancy, agreement, threshold) is the
    # parent of its attempts, child jobs that miners of distinct owners claim and run like any job.
    parent = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="attempts", db_index=False
    )
    verification = models.JSONField(default=dict, blank=True)
    # The escrow of a job settling on a verdict outlives its completion: it is released when its
    # answer is found to agree with others', refunded when it was outvoted (``job_verdict_settle``).
    settles_on_verdict = models.BooleanField(default=False)

    # The current (or last) attempt and its lease. ``lease_token`` fences each attempt.
    # Looked up through ``job_miner_status_idx`` (miner, status, completed_at), which also counts a
    # miner's jobs by state from the index alone.
    miner = models.ForeignKey(
        "miners.Miner", on_delete=models.PROTECT, null=True, blank=True, related_name="jobs", db_index=False
    )
    attempt = models.PositiveSmallIntegerField(default=0)
    max_attempts = models.PositiveSmallIntegerField()
    lease_token = models.CharField(max_length=36, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    result = models.JSONField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    progress = models.FloatField(default=0)
    usage = models.JSONField(default=dict, blank=True)

    price = models.DecimalField(
        max_digits=24, decimal_places=8, null=True, blank=True, help_text="Held in escrow at submission."
    )
    unit_price = models.DecimalField(
        max_digits=24, decimal_places=8, null=True, blank=True, help_text="Per 1,000 tokens, from the catalog."
    )
    # The escrow of the job's price, when it has one: its status and charge are read from it.
    payment = models.OneToOneField(
        "payments.Payment", on_delete=models.PROTECT, to_field="payment_id", null=True, blank=True, related_name="job"
    )

    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    request_fingerprint = models.CharField(max_length=64, blank=True, editable=False)

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=JobStatus.values), name="job_status_valid"),
            models.CheckConstraint(condition=Q(type__in=JobType.values), name="job_type_valid"),
            models.CheckConstraint(condition=Q(priority__lte=JobPriority.URGENT), name="job_priority_valid"),
            models.CheckConstraint(condition=Q(attempt__lte=models.F("max_attempts")), name="job_attempts_bounded"),
            models.CheckConstraint(condition=Q(progress__gte=0, progress__lte=100), name="job_progress_percent"),
            # A verified job runs as its attempts: it holds no lease of its own.
            models.CheckConstraint(
                condition=~Q(status="running")
                | Q(miner__isnull=False, lease_expires_at__isnull=False) & ~Q(lease_token="")
                | Q(miner__isnull=True, parent__isnull=True) & ~Q(verification={}),
                name="job_running_has_lease",
            ),
            models.CheckConstraint(
                condition=~Q(status="queued") | Q(lease_expires_at__isnull=True, lease_token=""),
                name="job_queued_has_no_lease",
            ),
            models.UniqueConstraint(
                fields=["client", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="job_idempotency_key_unique",
            ),
        ]
        indexes = [
            models.Index(fields=["model", "rank_at"], condition=Q(status="queued"), name="job_queue_model_idx"),
            models.Index(fields=["expires_at"], condition=Q(status="queued"), name="job_queue_expiry_idx"),
            models.Index(fields=["lease_expires_at"], condition=Q(status="running"), name="job_lease_idx"),
            models.Index(fields=["miner"], condition=Q(status="running"), name="job_running_miner_idx"),
            models.Index(fields=["miner", "status", "completed_at"], name="job_miner_status_idx"),
            # The staff console's job list, newest first, without sorting every job.
            models.Index(fields=["-created_at", "-id"], name="job_created_idx"),
            models.Index(
                fields=["model", "-completed_at"], condition=Q(status="completed"), name="job_completed_model_idx"
            ),
            models.Index(fields=["client", "-created_at"], name="job_client_created_idx"),
            models.Index(fields=["status", "-created_at"], name="job_status_created_idx"),
            models.Index(fields=["parent"], condition=Q(parent__isnull=False), name="job_parent_idx"),
            # Whether attempts of verified jobs wait (the claim's distinct-owner rule then takes turns).
            models.Index(
                fields=["rank_at"], condition=Q(status="queued", parent__isnull=False), name="job_queue_attempt_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} job {self.id} ({self.status})"

    @property
    def state(self) -> str:
        return AITBC_STATE[self.status]

    @property
    def is_terminal(self) -> bool:
        return self.status in JobStatus.TERMINAL

    @property
    def payment_status(self) -> str:
        """The payment's status (escrowed, released or refunded); empty for a free job. A verified
        job's is its attempts': released once any agreeing attempt was paid, refunded when all
        were refunded, escrowed until then."""
        if self.payment_id:
            return self.payment.status
        escrows = self.attempt_escrows
        if not escrows:
            return ""
        statuses = {payment.status for payment in escrows}
        if PaymentStatus.RELEASED in statuses:
            return PaymentStatus.RELEASED
        return PaymentStatus.REFUNDED if statuses == {PaymentStatus.REFUNDED} else PaymentStatus.ESCROWED

    @property
    def amount_charged(self):
        """What the job cost its client once its escrow was released, else None: for a verified
        job, what its agreeing attempts were paid once they were."""
        if self.payment_id:
            return self.payment.amount_charged
        if self.payment_status != PaymentStatus.RELEASED:
            return None
        return sum(payment.amount_charged for payment in self.attempt_escrows if payment.amount_charged is not None)

    @cached_property
    def attempt_escrows(self) -> list[Payment]:
        """A verified job's attempts' escrows (each attempt holds its own); empty for other jobs."""
        if not self.verification or self.parent_id:
            return []
        return list(Payment.objects.filter(job__parent=self))


class FailedAttempt(models.Model):
    """An attempt a miner took and did not finish: it reported a failure, let its lease lapse, went
    silent or deregistered holding the job. Miners' reputations are counted from these.

    Not recorded: attempts staff ended (re-queue, take offline, ban), and, from an in-cluster
    worker (the platform's own engine), a request it cannot run or its own shutdown. An HTTP
    miner names its own error codes, so each failure it reports is recorded.
    """

    # Looked up through the (job, attempt) unique index.
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="failed_attempts", db_index=False)
    miner = models.ForeignKey("miners.Miner", on_delete=models.CASCADE, related_name="failed_attempts")
    attempt = models.PositiveSmallIntegerField()
    error_code = models.CharField(max_length=64)
    error_message = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["job", "attempt"], name="failed_attempt_once_per_attempt"),
            models.CheckConstraint(condition=Q(attempt__gte=1), name="failed_attempt_number_positive"),
        ]
        indexes = [models.Index(fields=["miner", "-created_at"], name="failed_attempt_miner_idx")]

    def __str__(self) -> str:
        return f"{self.error_code} on attempt {self.attempt} of job {self.job_id}"


class VerdictKind(models.TextChoices):
    AGREED = "agreed", "Agreed with the consensus"
    OUTVOTED = "outvoted", "Outvoted"
    CANARY_PASSED = "canary_passed", "Canary answered right"
    CANARY_FAILED = "canary_failed", "Canary answered wrong"


# The verdicts that count against a miner: its answer was wrong.
VerdictKind.WRONG = (VerdictKind.OUTVOTED, VerdictKind.CANARY_FAILED)


class Verdict(models.Model):
    """What the platform concluded about a miner's answer to one job: it agreed with the other
    attempts of a verified job or was outvoted, or it answered a canary right or wrong. Wrong
    answers count against the miner's reputation and may suspend it."""

    job = models.OneToOneField(Job, on_delete=models.PROTECT, related_name="verdict")
    miner = models.ForeignKey("miners.Miner", on_delete=models.PROTECT, related_name="verdicts", db_index=False)
    kind = models.CharField(max_length=16, choices=VerdictKind.choices)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.CheckConstraint(condition=Q(kind__in=VerdictKind.values), name="verdict_kind_valid")]
        indexes = [models.Index(fields=["miner", "-created_at"], name="verdict_miner_idx")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.miner_id} on job {self.job_id}"

    @property
    def wrong(self) -> bool:
        return self.kind in VerdictKind.WRONG


class Receipt(models.Model):
    """A signed receipt for a completed job. The signed JSON is stored byte for byte.

    ``opening`` holds the salts of the receipt's input and output commitments
    (``{"input_salt", "output_salt"}``, hex): the job's client is given them, and whoever the
    client shows them to can check the receipt against the job's payload and result. Receipts
    signed before commitments have none.
    """

    receipt_id = models.CharField(max_length=64, primary_key=True)
    # Looked up through ``receipt_job_idx`` (job, created_at).
    job = models.ForeignKey(Job, on_delete=models.PROTECT, related_name="receipts", db_index=False)
    signed_json = models.TextField(editable=False)
    opening = models.JSONField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["job", "-created_at"], name="receipt_job_idx")]

    def __str__(self) -> str:
        return self.receipt_id

    @property
    def document(self) -> dict:
        return json.loads(self.signed_json)

    def served_document(self) -> dict:
        """The receipt as signed, with the attestations given since (prefetch ``attestations``)."""
        document = self.document
        attestations = [attestation.as_signature() for attestation in self.attestations.all()]
        if attestations:
            document["attestations"] = [*document.get("attestations", []), *attestations]
        return document

    def public_document(self) -> dict:
        """What the public explorer shows: ``served_document``, except that a receipt signed before
        input and output commitments is shown without its ``client`` (the client's username) and
        its plain ``metadata.input_sha256`` and ``output_sha256`` (which let anyone confirm a guessed
        input or output), named in its ``withheld``. Its signature then verifies only over the whole
        receipt, which its owner holds: sealed receipts never change."""
        document = self.served_document()
        metadata = document.get("metadata")
        if not isinstance(metadata, dict) or "commitment" in metadata:
            return document
        withheld = ["client"] if document.pop("client", None) is not None else []
        withheld += [f"metadata.{name}" for name in ("input_sha256", "output_sha256") if metadata.pop(name, None)]
        if withheld:
            document["withheld"] = withheld
        return document


class ReceiptAttestation(models.Model):
    """A co-signature of a receipt's signed payload, given after signing (the receipt itself never changes)."""

    receipt = models.ForeignKey(Receipt, on_delete=models.PROTECT, related_name="attestations")
    alg = models.CharField(max_length=16, default="Ed25519")
    key_id = models.CharField(max_length=64, help_text="URL-safe base64 public key, no padding")
    sig = models.CharField(max_length=128, help_text="URL-safe base64 signature, no padding")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["receipt", "key_id"], name="receipt_attestation_key_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.receipt_id} attested by {self.key_id}"

    def as_signature(self) -> dict:
        return {"alg": self.alg, "key_id": self.key_id, "sig": self.sig}
