import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class WebhookEvent(models.TextChoices):
    JOB_COMPLETED = "job.completed", "A job completed"
    JOB_FAILED = "job.failed", "A job failed"
    JOB_CANCELLED = "job.cancelled", "A job was cancelled"
    JOB_EXPIRED = "job.expired", "A job expired in the queue"
    PAYMENT_RELEASED = "payment.released", "A job's escrow was paid out"
    PAYMENT_REFUNDED = "payment.refunded", "A job's escrow was refunded"


# What a test delivery is, besides the events an endpoint subscribes to.
TEST_EVENT = "webhook.test"


class WebhookEndpoint(models.Model):
    """A URL of a user's to which the events it subscribes to are delivered, signed with its secret
    as Standard Webhooks say."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_endpoints")
    url = models.URLField(max_length=2000)
    description = models.CharField(max_length=200, blank=True)
    events = models.JSONField(help_text="The event types delivered here.")
    # The signing key ("whsec_" and base64), shown to the owner once; it must be held to sign.
    secret = models.CharField(max_length=100, editable=False)
    # After a rotation, deliveries are signed with the previous key too until this time.
    previous_secret = models.CharField(max_length=100, blank=True, editable=False)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    enabled = models.BooleanField(default=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "-created_at"], name="webhook_owner_idx")]
        constraints = [
            models.CheckConstraint(
                condition=Q(enabled=True, disabled_at__isnull=True) | Q(enabled=False, disabled_at__isnull=False),
                name="webhook_disabled_at_iff_disabled",
            ),
        ]

    def __str__(self) -> str:
        return self.url


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed (given up)"


class WebhookDelivery(models.Model):
    """One event for one endpoint: its body, built once, and how its attempts went. Deliveries for
    one job reach an endpoint in the order they were recorded (``id``)."""

    message_id = models.CharField(max_length=64, unique=True, help_text="The webhook-id header: one per event")
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event_type = models.CharField(max_length=64)
    job = models.ForeignKey("jobs.Job", on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    body = models.TextField(help_text="The JSON sent, the same bytes on every attempt")
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # Set while an attempt is under way, so that two runners never send it at once.
    attempting_since = models.DateTimeField(null=True, blank=True)
    first_attempt_at = models.DateTimeField(null=True, blank=True, help_text="Retries end a day after this")
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    response_status = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=DeliveryStatus.values), name="webhook_delivery_status_valid"),
            models.UniqueConstraint(
                fields=["endpoint", "event_type", "job"],
                condition=Q(job__isnull=False),
                name="webhook_delivery_once_per_event",
            ),
        ]
        indexes = [
            models.Index(fields=["endpoint", "-id"], name="webhook_delivery_log_idx"),
            models.Index(
                fields=["endpoint", "job", "id"], condition=Q(status="pending"), name="webhook_pending_job_idx"
            ),
            models.Index(fields=["created_at"], condition=Q(status="pending"), name="webhook_pending_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} → {self.endpoint_id}"
