import dramatiq

from payments import exchange


@dramatiq.actor(queue_name="housekeeping", time_limit=60_000, max_retries=0)
def exchange_payments_expire() -> None:
    """Top-up requests whose deposit never came in expire (reads show them expired at once)."""
    exchange.exchange_payments_expire_due()
