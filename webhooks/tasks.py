import dramatiq
from django.conf import settings

from webhooks import services


class DeliveryFailed(dramatiq.Retry):
    """An attempt failed: Dramatiq retries the message with exponential backoff and jitter. A ``Retry``,
    so that an endpoint that is down is not logged as the server's error, with a traceback, at every
    attempt: the delivery log keeps why each one failed."""


def _retry_when(retries: int, exception: BaseException) -> bool:
    # The delivery itself says when to stop (``WEBHOOK_RETRY_SECONDS`` of failures); the count is a backstop.
    return isinstance(exception, DeliveryFailed) and retries < settings.WEBHOOK_MAX_RETRIES


@dramatiq.actor(
    queue_name="webhooks",
    time_limit=(settings.WEBHOOK_TIMEOUT_SECONDS + 30) * 1000,
    max_retries=settings.WEBHOOK_MAX_RETRIES,
    retry_when=_retry_when,
    min_backoff=settings.WEBHOOK_RETRY_MIN_BACKOFF_MS,
    max_backoff=settings.WEBHOOK_RETRY_MAX_BACKOFF_MS,
)
def deliver_webhook(message_id: str) -> None:
    if services.delivery_attempt(message_id=message_id) == services.RETRY:
        raise DeliveryFailed(message_id)


@dramatiq.actor(queue_name="housekeeping", time_limit=60_000, max_retries=0)
def resend_stalled_webhooks() -> None:
    services.deliveries_resend_stalled()
