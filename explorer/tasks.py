import dramatiq
from django.conf import settings
from django.db import InterfaceError, OperationalError

from explorer import services
from jobs import feed

# A run that the database interrupted (a restart, a dropped connection) is retried soon, a few
# times. One that ran out of time is not: runs are bounded well inside the time limit, so that
# is a stuck database, and the schedule's next run goes on where it stopped anyway.
RETRIES = 3


def _retry_when(retries: int, exception: BaseException) -> bool:
    return retries < RETRIES and isinstance(exception, (OperationalError, InterfaceError))


@dramatiq.actor(
    queue_name="housekeeping",
    time_limit=3 * settings.BLOCK_SEAL_RUN_SECONDS * 1000,
    max_retries=RETRIES,
    retry_when=_retry_when,
    min_backoff=500,
    max_backoff=settings.HOUSEKEEPING_INTERVAL_SECONDS * 1000,
)
def seal_block() -> None:
    """Seal what waits, in blocks of ``BLOCK_MAX_LEAVES``, for at most ``BLOCK_SEAL_RUN_SECONDS``."""
    feed.publish_blocks_sealed(services.blocks_seal_pending())
