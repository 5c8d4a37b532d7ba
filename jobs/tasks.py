import dramatiq

from jobs import services, verification


@dramatiq.actor(queue_name="housekeeping", time_limit=60_000, max_retries=0)
def expire_queued_jobs() -> None:
    services.jobs_expire_queued()


@dramatiq.actor(queue_name="housekeeping", time_limit=60_000, max_retries=0)
def requeue_lapsed_leases() -> None:
    services.jobs_requeue_lapsed()


@dramatiq.actor(queue_name="housekeeping", time_limit=60_000, max_retries=0)
def mark_silent_miners_offline() -> None:
    services.miners_mark_silent_offline()


@dramatiq.actor(queue_name="housekeeping", time_limit=60_000, max_retries=0)
def refresh_miner_reputations() -> None:
    verification.miners_refresh_reputation()


@dramatiq.actor(queue_name="housekeeping", time_limit=60_000, max_retries=0)
def end_verifications_past_ttl() -> None:
    verification.verifications_end_past_ttl()


@dramatiq.actor(queue_name="housekeeping", time_limit=60_000, max_retries=0)
def decide_stalled_verifications() -> None:
    verification.verifications_decide_stalled()
