import dramatiq

from miners import services


@dramatiq.actor(queue_name="housekeeping", time_limit=60_000, max_retries=0)
def mark_silent_miners_offline() -> None:
    services.miners_mark_silent_offline()
