"""Webhooks: endpoints, and the delivery of each event to them.

A job's end or its escrow's settlement is recorded as one delivery per subscribed endpoint in the
transaction of the change itself (``jobs.services.when_jobs_end``), so no event is lost to a
crash (but a free job's completion on PostgreSQL, one statement in autocommit, whose event is
recorded right after it); once it commits, a Dramatiq message sends each. A delivery is a POST of a JSON body, the
same bytes on every attempt, signed as Standard Webhooks say (``webhook-id``,
``webhook-timestamp``, ``webhook-signature``: HMAC-SHA256 of ``id.timestamp.body`` under the
endpoint's secret). A failed attempt raises in the actor, and Dramatiq retries it with
exponential backoff and jitter; after ``WEBHOOK_RETRY_SECONDS`` of failures the delivery is given
up and its endpoint disabled, which its owner sees on the dashboard. The deliveries for one job
reach an endpoint in the order they were recorded: one waits while an earlier one is pending, and
each one that ends sends the next.
"""

import base64
import json
import logging
import secrets
import threading
from datetime import timedelta
from functools import partial, update_wrapper

import httpx
from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from core.api.formats import iso_datetime
from core.errors import Conflict, Invalid, ServiceError
from jobs.api.serializers import decimal_text, job_view
from webhooks import tasks
from webhooks.addresses import UnsafeAddress, check_resolved, check_url
from webhooks.models import TEST_EVENT, DeliveryStatus, WebhookDelivery, WebhookEndpoint, WebhookEvent

logger = logging.getLogger(__name__)

DELIVERED, RETRY, GAVE_UP, SKIPPED = "delivered", "retry", "gave_up", "skipped"
USER_AGENT = "AITBC-Webhooks/1"


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(16)


def _checked(url: str, events) -> tuple[str, list[str]]:
    try:
        check_url(url)
    except UnsafeAddress as error:
        raise Invalid(str(error), code="WEBHOOK_URL_REFUSED", errors={"url": [str(error)]}) from None
    unknown = sorted(set(events) - set(WebhookEvent.values))
    if not events or unknown:
        message = f"Unknown event {unknown[0]!r}." if unknown else "Subscribe to at least one event."
        raise Invalid(message, code="VALIDATION_ERROR", errors={"events": [message]})
    return url, list(dict.fromkeys(events))


def endpoint_create(*, owner, url: str, events: list[str], description: str = "") -> tuple[WebhookEndpoint, str]:
    """Add an endpoint; returns it and its secret, which is shown this once. (The limit bounds what
    one account can make the platform send; two creations racing may pass it by one.)"""
    url, events = _checked(url, events)
    if WebhookEndpoint.objects.filter(owner=owner).count() >= settings.WEBHOOKS_MAX_PER_USER:
        raise Conflict(f"An account has at most {settings.WEBHOOKS_MAX_PER_USER} webhooks.", code="WEBHOOK_LIMIT")
    secret = new_secret()
    _owner_has_endpoints(owner.pk)
    endpoint = WebhookEndpoint.objects.create(
        owner=owner, url=url, events=events, description=description, secret=secret
    )
    return endpoint, secret


def endpoint_delete(*, endpoint: WebhookEndpoint) -> None:
    endpoint.delete()
    _owner_changed(endpoint.owner_id)


def endpoint_rotate_secret(*, endpoint: WebhookEndpoint) -> str:
    """A new secret, shown this once; deliveries carry a signature with the old one as well for
    ``WEBHOOK_SECRET_ROTATION_SECONDS``, so receivers can switch without losing any."""
    secret = new_secret()
    now = timezone.now()
    endpoint.previous_secret, endpoint.secret = endpoint.secret, secret
    endpoint.previous_secret_expires_at = now + timedelta(seconds=settings.WEBHOOK_SECRET_ROTATION_SECONDS)
    endpoint.save(update_fields=["secret", "previous_secret", "previous_secret_expires_at", "updated_at"])
    return secret


def endpoint_disable(*, endpoint: WebhookEndpoint, reason: str) -> None:
    WebhookEndpoint.objects.filter(pk=endpoint.pk, enabled=True).update(
        enabled=False, disabled_at=timezone.now(), disabled_reason=reason[:300], updated_at=timezone.now()
    )
    _owner_changed(endpoint.owner_id)
    logger.warning("webhook %s of user %s disabled: %s", endpoint.pk, endpoint.owner_id, reason)


@transaction.atomic
def endpoint_enable(*, endpoint: WebhookEndpoint) -> WebhookEndpoint:
    """Enable an endpoint again: its pending deliveries are sent, each job's in order."""
    _owner_has_endpoints(endpoint.owner_id)
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        enabled=True, disabled_at=None, disabled_reason="", updated_at=timezone.now()
    )
    endpoint.refresh_from_db()
    heads = _sendable(WebhookDelivery.objects.filter(endpoint=endpoint, status=DeliveryStatus.PENDING))
    WebhookDelivery.objects.filter(pk__in=heads.values("pk")).update(first_attempt_at=None)
    _send_after_commit(list(heads.values_list("message_id", flat=True)))
    return endpoint


@transaction.atomic
def endpoint_test(*, endpoint: WebhookEndpoint) -> WebhookDelivery:
    """Queue a ``webhook.test`` delivery to the endpoint, enabled or not, signed like any other and
    tried once."""
    now = timezone.now()
    delivery = WebhookDelivery.objects.create(
        message_id=new_message_id(),
        endpoint=endpoint,
        event_type=TEST_EVENT,
        body=_body(TEST_EVENT, {"webhook_id": str(endpoint.pk), "message": "A test delivery."}, now),
    )
    _send_after_commit([delivery.message_id])
    return delivery


# --- Recording events ------------------------------------------------------------------------


def _body(event_type: str, data: dict, now) -> str:
    return json.dumps({"type": event_type, "timestamp": iso_datetime(now), "data": data}, separators=(",", ":"))


def _event_data(event_type: str, job) -> dict:
    if event_type.startswith("payment."):
        payment = job.payment
        return {
            "payment_id": payment.payment_id,
            "job_id": str(job.pk),
            "status": payment.status,
            "amount": decimal_text(payment.amount),
            "amount_paid": decimal_text(payment.amount_paid),
            "amount_refunded": decimal_text(payment.amount_refunded),
            "currency": payment.currency,
        }
    view = job_view(job, outlook={})
    del view["payload"]  # the client has it, and it can be large
    return view


def deliveries_record(events: list) -> None:
    """Record a delivery of each event (``(event_type, job)``) to each enabled endpoint of the job's
    client that subscribes to it, in the caller's transaction; send them once it commits.

    The attempts of a verified job (``Job.parent``) are the platform's way of answering it, not
    jobs of the client's: the client hears of its own job's end, not theirs. (A swarm's shares are
    jobs the coordinating client submitted, each escrowed and receipted: their events are sent.)"""
    events = [(event_type, job) for event_type, job in events if job.parent_id is None]
    if not events:
        return
    endpoints = _enabled_endpoints({job.client_id for _, job in events})
    if not endpoints:
        return
    now = timezone.now()
    deliveries = []
    for event_type, job in events:
        subscribed = [e for e in endpoints if e.owner_id == job.client_id and event_type in e.events]
        if subscribed:
            body = _body(event_type, _event_data(event_type, job), now)
            deliveries += [
                WebhookDelivery(
                    message_id=new_message_id(), endpoint=endpoint, event_type=event_type, job=job, body=body
                )
                for endpoint in subscribed
            ]
    # An event already recorded for an endpoint (a payment settled by hand, say) is not recorded twice.
    WebhookDelivery.objects.bulk_create(deliveries, ignore_conflicts=True)
    _send_after_commit([delivery.message_id for delivery in deliveries])


# Whether a user has an enabled endpoint, in the cache: most clients have none, and their jobs'
# ends then cost no query. Creating or enabling an endpoint marks its owner before the row is
# written and again once it commits (over what an event recorded meanwhile may have found), so
# the very next event after the commit reaches it; deleting or disabling one forgets the mark,
# and the next event reads the endpoints. An event only ever adds a mark that is missing.
OWNER_MARK_SECONDS = 24 * 3600


def _owner_key(owner_id) -> str:
    return f"webhooks:owner-has-endpoints:{owner_id}"


def _owner_has_endpoints(owner_id) -> None:
    key = _owner_key(owner_id)
    cache.set(key, True, OWNER_MARK_SECONDS)
    if not cache.get(key):
        # The cache (Redis) does not answer, and fails quietly: a mark saying "none" that it still
        # holds from before would hide the endpoint's events once it answers again.
        raise ServiceError(
            "Webhooks cannot be added or enabled just now; try again in a moment.",
            code="SERVICE_UNAVAILABLE",
            status_code=503,
        )
    # Named as what it calls: Django logs a robust hook's failure under its __qualname__, which a
    # bare partial lacks (the logging would raise instead, after the commit).
    transaction.on_commit(update_wrapper(partial(cache.set, key, True, OWNER_MARK_SECONDS), cache.set), robust=True)


def _owner_changed(owner_id) -> None:
    cache.delete(_owner_key(owner_id))  # a mark left behind (no cache) costs a query per event, nothing more


def _enabled_endpoints(owner_ids: set) -> list[WebhookEndpoint]:
    """The enabled endpoints of ``owner_ids``: read only for the owners marked as having some, or
    not known either way (who are then marked)."""
    keys = {_owner_key(owner_id): owner_id for owner_id in owner_ids}
    marks = cache.get_many(list(keys))  # none while the cache does not answer: every owner is then read
    unknown = {owner_id for key, owner_id in keys.items() if key not in marks}
    candidates = unknown | {owner_id for key, owner_id in keys.items() if marks.get(key)}
    if not candidates:
        return []
    endpoints = list(WebhookEndpoint.objects.filter(owner__in=candidates, enabled=True))
    for owner_id in unknown:
        cache.add(_owner_key(owner_id), any(e.owner_id == owner_id for e in endpoints), OWNER_MARK_SECONDS)
    return endpoints


def _send_after_commit(message_ids: list[str]) -> None:
    for message_id in message_ids:
        # A broker that does not answer is logged (housekeeping re-sends the delivery), named as
        # above so that the logging itself does not fail.
        send = tasks.deliver_webhook.send
        transaction.on_commit(update_wrapper(partial(send, message_id), send), robust=True)


# --- Delivering ------------------------------------------------------------------------------


def _earlier_pending():
    return WebhookDelivery.objects.filter(
        endpoint=OuterRef("endpoint"), job=OuterRef("job"), status=DeliveryStatus.PENDING, id__lt=OuterRef("id")
    )


def _sendable(deliveries):
    """Those of ``deliveries`` that may be sent now: no earlier delivery of their job is pending."""
    return deliveries.filter(~Exists(_earlier_pending()))


def _claim(message_id: str, now):
    """The delivery, marked as being attempted, if it may be sent now (pending, its endpoint enabled
    or it a test, first of its job, nobody attempting it); else None."""
    stale = now - timedelta(seconds=3 * settings.WEBHOOK_TIMEOUT_SECONDS)
    claimable = _sendable(
        WebhookDelivery.objects.filter(message_id=message_id, status=DeliveryStatus.PENDING)
        .filter(Q(endpoint__enabled=True) | Q(event_type=TEST_EVENT))
        .filter(Q(attempting_since__isnull=True) | Q(attempting_since__lt=stale))
    )
    if not WebhookDelivery.objects.filter(pk__in=claimable.values("pk")).update(attempting_since=now):
        return None
    return WebhookDelivery.objects.select_related("endpoint").get(message_id=message_id)


def signature_headers(endpoint: WebhookEndpoint, delivery: WebhookDelivery, now) -> dict[str, str]:
    """The Standard Webhooks headers: one ``v1`` signature per secret in force, space-separated."""
    secrets_in_force = [endpoint.secret]
    if endpoint.previous_secret and endpoint.previous_secret_expires_at and endpoint.previous_secret_expires_at > now:
        secrets_in_force.append(endpoint.previous_secret)
    signatures = [Webhook(secret).sign(delivery.message_id, now, delivery.body) for secret in secrets_in_force]
    return {
        "webhook-id": delivery.message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": " ".join(signatures),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


_client: httpx.Client | None = None
_client_lock = threading.Lock()


def _http() -> httpx.Client:
    """One client per process, made on first use (after a worker forks): its connections and TLS
    context are reused from one delivery to the next."""
    global _client
    with _client_lock:
        if _client is None:
            _client = httpx.Client(follow_redirects=False)
        return _client


def delivery_attempt(*, message_id: str, now=None) -> str:
    """Try to deliver once: DELIVERED, RETRY (it failed; the caller retries later), GAVE_UP (it has
    failed for ``WEBHOOK_RETRY_SECONDS``: the endpoint is disabled) or SKIPPED (not to be sent now:
    delivered already, its endpoint disabled, an earlier one of its job pending, or under way)."""
    now = now or timezone.now()
    delivery = _claim(message_id, now)
    if delivery is None:
        return SKIPPED
    status_code, error = None, ""
    try:
        check_resolved(delivery.endpoint.url)
        response = _http().post(
            delivery.endpoint.url,
            content=delivery.body.encode(),
            headers=signature_headers(delivery.endpoint, delivery, now),
            timeout=settings.WEBHOOK_TIMEOUT_SECONDS,
            follow_redirects=False,
        )
        status_code = response.status_code
        if response.is_redirect:
            error = f"HTTP {status_code}: redirects are not followed"
        elif not response.is_success:
            error = f"HTTP {status_code}"
    except UnsafeAddress as refused:
        error = str(refused)
    except httpx.HTTPError as failure:
        error = f"{type(failure).__name__}: {failure}" if str(failure) else type(failure).__name__
    return _record_attempt(delivery, status_code=status_code, error=error, now=now)


def _record_attempt(delivery: WebhookDelivery, *, status_code, error: str, now) -> str:
    attempted = {
        "attempts": F("attempts") + 1,
        "attempting_since": None,
        "last_attempt_at": now,
        "first_attempt_at": delivery.first_attempt_at or now,
        "response_status": status_code,
        "last_error": error[:500],
    }
    row = WebhookDelivery.objects.filter(pk=delivery.pk)
    if not error:
        row.update(status=DeliveryStatus.DELIVERED, delivered_at=now, **attempted)
        _send_next(delivery)
        return DELIVERED
    if delivery.event_type == TEST_EVENT:  # tried once: its outcome is the answer to the test
        row.update(status=DeliveryStatus.FAILED, **attempted)
        return GAVE_UP
    failing_for = now - (delivery.first_attempt_at or now)
    if failing_for < timedelta(seconds=settings.WEBHOOK_RETRY_SECONDS):
        row.update(**attempted)
        return RETRY
    with transaction.atomic():
        row.update(status=DeliveryStatus.FAILED, **attempted)
        endpoint_disable(
            endpoint=delivery.endpoint,
            reason=f"Deliveries failed for {_duration(failing_for)}; the last: {error}",
        )
    return GAVE_UP


def _duration(elapsed: timedelta) -> str:
    hours = elapsed.total_seconds() / 3600
    return f"{hours:.0f} hours" if hours >= 2 else f"{elapsed.total_seconds():.0f} seconds"


def _send_next(delivery: WebhookDelivery) -> None:
    """Send the next pending delivery of the same job to the same endpoint, now that this one ended."""
    if delivery.job_id is None:
        return
    following = (
        WebhookDelivery.objects.filter(
            endpoint=delivery.endpoint_id, job=delivery.job_id, status=DeliveryStatus.PENDING
        )
        .order_by("id")
        .values_list("message_id", flat=True)
        .first()
    )
    if following:
        tasks.deliver_webhook.send(following)


def deliveries_resend_stalled(*, now=None) -> int:
    """Send again what waits with no message on its way (a broker that lost it, a worker killed
    mid-attempt): pending deliveries of enabled endpoints, first of their job, never tried for a
    minute or not tried for longer than the longest retry delay. Returns how many were sent."""
    now = now or timezone.now()
    longest_wait = timedelta(milliseconds=settings.WEBHOOK_RETRY_MAX_BACKOFF_MS) + timedelta(minutes=1)
    stale_attempt = now - timedelta(seconds=3 * settings.WEBHOOK_TIMEOUT_SECONDS)
    stalled = _sendable(
        WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING, endpoint__enabled=True).filter(
            Q(last_attempt_at__isnull=True, created_at__lt=now - timedelta(minutes=1))
            | Q(last_attempt_at__lt=now - longest_wait)
        )
    ).filter(Q(attempting_since__isnull=True) | Q(attempting_since__lt=stale_attempt))
    message_ids = list(stalled.order_by("id").values_list("message_id", flat=True)[: settings.WEBHOOK_RESEND_BATCH])
    for message_id in message_ids:
        tasks.deliver_webhook.send(message_id)
    return len(message_ids)
