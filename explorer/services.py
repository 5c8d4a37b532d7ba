"""Sealing: blocks over the receipts and ledger transactions that wait, chained and signed."""

import hashlib
import time
from collections import defaultdict

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from core.crypto import merkle, signing
from explorer.models import GENESIS_PREV_HASH, Block, BlockLeaf, PendingLeaf
from explorer.sources import Leaf, leaf_source

# The advisory lock that serialises sealers (one transaction, one block at a time): heights never fork.
_SEAL_LOCK_KEY = 0x61697462635F626C  # "aitbc_bl"


def _block(*, height: int, prev_hash: str, leaves: list[Leaf], timestamp) -> Block:
    block = Block(
        height=height,
        prev_hash=prev_hash,
        merkle_root=merkle.root([leaf.hash for leaf in leaves]).hex(),
        timestamp=timestamp,
        tx_count=len(leaves),
        proposer=signing.coordinator_key_id(),
    )
    header = signing.canonical_json(block.header())
    block.hash = hashlib.sha256(header).hexdigest()
    block.signature = signing.sign_bytes(header)
    return block


def _try_lock_chain() -> bool:
    """Take the chain's lock for this transaction, or say that another sealer holds it."""
    # On SQLite every write transaction already holds the database lock (IMMEDIATE mode).
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_SEAL_LOCK_KEY])
        return cursor.fetchone()[0]


def _seal(limit: int) -> Block | None:
    """Seal up to ``limit`` waiting items, oldest first, as the next block, in one transaction under
    the chain's lock; creates the genesis block first if there is none.

    None when nothing waits, or another sealer holds the lock or sealed some of these items in
    between (the database refuses to seal an item twice, and the block rolls back): that sealer
    is at work, and the next run goes on.
    """
    try:
        with transaction.atomic():
            if not _try_lock_chain():
                return None
            tip = Block.objects.order_by("-height").first()
            now = timezone.now()
            if tip is None:
                tip = _block(height=0, prev_hash=GENESIS_PREV_HASH, leaves=[], timestamp=now)
                tip.save(force_insert=True)
            leaves = _take_waiting(limit)
            if not leaves:
                return None
            block = _block(height=tip.height + 1, prev_hash=tip.hash, leaves=leaves, timestamp=max(now, tip.timestamp))
            block.save(force_insert=True)
            _insert_leaves(block, leaves)
    except IntegrityError:
        return None
    return block


def _take_waiting(limit: int) -> list[Leaf]:
    """The next ``limit`` waiting items as leaves, their ``PendingLeaf`` rows deleted (in the
    caller's transaction). Rows of items sealed already (or listed twice) are dropped with them."""
    while True:
        sealed_as = BlockLeaf.objects.filter(kind=OuterRef("kind"), ref=OuterRef("ref")).order_by().values("pk")[:1]
        waiting = list(
            PendingLeaf.objects.order_by("id")
            .annotate(sealed_as=Subquery(sealed_as))
            .values_list("id", "kind", "ref", "sealed_as")[:limit]
        )
        if not waiting:
            return []
        PendingLeaf.objects.filter(id__in=[row[0] for row in waiting]).delete()
        refs = defaultdict(list)
        for _, kind, ref, sealed in waiting:
            if sealed is None:
                refs[kind].append(ref)
        data = {
            (kind, ref): value
            for kind, kind_refs in refs.items()
            for ref, value in leaf_source(kind).current(kind_refs).items()
        }
        leaves = [Leaf(kind, ref, data.pop((kind, ref))) for _, kind, ref, _ in waiting if (kind, ref) in data]
        if leaves:
            return leaves


_INSERT_LEAVES = f"INSERT INTO {BlockLeaf._meta.db_table} (block_id, position, kind, ref, leaf_hash)"


def _insert_leaves(block: Block, leaves: list[Leaf]) -> None:
    # Plain rows, not model instances: a block holds up to BLOCK_MAX_LEAVES of them. PostgreSQL
    # takes them as one statement over five arrays, not one statement a row.
    rows = [(block.height, position, leaf.kind, leaf.ref, leaf.hash.hex()) for position, leaf in enumerate(leaves)]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"{_INSERT_LEAVES} SELECT * FROM unnest(%s::bigint[], %s::integer[], %s::text[], %s::text[], %s::text[])",
                [list(column) for column in zip(*rows, strict=True)],
            )
        else:
            cursor.executemany(f"{_INSERT_LEAVES} VALUES (%s, %s, %s, %s, %s)", rows)


def block_seal(*, max_leaves: int | None = None) -> Block | None:
    """Seal the next block over up to ``max_leaves`` waiting receipts and ledger transactions.

    Creates the genesis block first if there is none. Returns None when nothing waits.
    """
    return _seal(max_leaves or settings.BLOCK_MAX_LEAVES)


def blocks_seal_pending(*, max_blocks: int | None = None, seconds: float | None = None) -> list[Block]:
    """Seal what waits in blocks of ``BLOCK_MAX_LEAVES``, starting no block after ``seconds``
    (``BLOCK_SEAL_RUN_SECONDS``) nor past ``max_blocks`` (``BLOCK_MAX_BLOCKS_PER_RUN``): the next
    run goes on where this one stopped.

    Each block is its own transaction, which seals its items and deletes their ``PendingLeaf``
    rows together: a run stopped at any point loses nothing and seals nothing twice. A run that
    finds another sealer at work stops.
    """
    deadline = time.monotonic() + (seconds or settings.BLOCK_SEAL_RUN_SECONDS)
    sealed = []
    for _ in range(max_blocks or settings.BLOCK_MAX_BLOCKS_PER_RUN):
        block = _seal(settings.BLOCK_MAX_LEAVES)
        if block is None:
            break
        sealed.append(block)
        if time.monotonic() >= deadline:
            break
    return sealed
