import dramatiq

from accounts import services


@dramatiq.actor(queue_name="housekeeping", time_limit=60_000, max_retries=0)
def purge_ended_sign_ins() -> None:
    services.sign_in_records_purge()
