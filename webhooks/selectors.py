from django.db.models import QuerySet

from webhooks.models import WebhookDelivery, WebhookEndpoint


def endpoints_of(*, owner) -> QuerySet[WebhookEndpoint]:
    return WebhookEndpoint.objects.filter(owner=owner).order_by("-created_at", "-pk")


def endpoint_of(*, owner, endpoint_id) -> WebhookEndpoint | None:
    return endpoints_of(owner=owner).filter(pk=endpoint_id).first()


def deliveries_of(*, endpoint: WebhookEndpoint) -> QuerySet[WebhookDelivery]:
    """The endpoint's delivery log, newest first."""
    return WebhookDelivery.objects.filter(endpoint=endpoint).order_by("-id")


def disabled_endpoints_of(*, owner) -> QuerySet[WebhookEndpoint]:
    """What the owner's dashboard warns about: the endpoints that were disabled."""
    return endpoints_of(owner=owner).filter(enabled=False)
