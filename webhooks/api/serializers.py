from drf_spectacular.utils import OpenApiExample, extend_schema_serializer
from rest_framework import serializers

from webhooks.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint, WebhookEvent


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Job and payment outcomes",
            request_only=True,
            value={"url": "https://example.com/aitbc-hook", "events": ["job.completed", "job.failed"]},
        )
    ]
)
class WebhookCreateSerializer(serializers.Serializer):
    url = serializers.URLField(max_length=2000, help_text="http(s); private, loopback and link-local hosts refused")
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=WebhookEvent.choices), allow_empty=False, max_length=len(WebhookEvent)
    )
    description = serializers.CharField(required=False, allow_blank=True, max_length=200, default="")


class WebhookSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(read_only=True)
    events = serializers.ListField(child=serializers.ChoiceField(choices=WebhookEvent.choices))

    class Meta:
        model = WebhookEndpoint
        fields = ["id", "url", "description", "events", "enabled", "disabled_at", "disabled_reason", "created_at"]
        read_only_fields = fields


class WebhookWithSecretSerializer(WebhookSerializer):
    secret = serializers.CharField(
        help_text="whsec_ and base64: the Standard Webhooks signing key, shown this once. Keep it to verify deliveries."
    )

    class Meta(WebhookSerializer.Meta):
        fields = [*WebhookSerializer.Meta.fields, "secret"]
        read_only_fields = fields

    def to_representation(self, endpoint):
        return {**super().to_representation(endpoint), "secret": self.context["secret"]}


class WebhookDeliverySerializer(serializers.ModelSerializer):
    status = serializers.ChoiceField(choices=DeliveryStatus.choices)
    job_id = serializers.UUIDField(allow_null=True)

    class Meta:
        model = WebhookDelivery
        fields = [
            "message_id",
            "event_type",
            "job_id",
            "status",
            "attempts",
            "response_status",
            "last_error",
            "created_at",
            "first_attempt_at",
            "last_attempt_at",
            "delivered_at",
        ]
        read_only_fields = fields
