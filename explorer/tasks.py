import dramatiq

from explorer import services
from jobs import feed


@dramatiq.actor(queue_name="housekeeping", time_limit=60_000, max_retries=0)
def seal_block() -> None:
    """Seal what waits, in blocks of ``BLOCK_MAX_LEAVES``; concurrent runs queue on the chain lock."""
    feed.publish_blocks_sealed(services.blocks_seal_pending())
