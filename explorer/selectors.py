import hashlib
import logging
import statistics
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.db.models import Aggregate, Count, FloatField, IntegerField, Max, OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.expressions import RawSQL
from django.db.models.fields.json import KT
from django.db.models.functions import Cast
from django.utils import timezone

from core.crypto import merkle, signing
from explorer import verify
from explorer.models import GENESIS_PREV_HASH, Block, BlockLeaf, LeafKind
from explorer.sources import LEAF_SOURCES, leaf_source
from jobs.models import Job, JobStatus, Receipt
from jobs.selectors import queue_depth_by_model
from miners.models import MinerStatus
from miners.selectors import miner_counts
from payments import selectors as ledger
from payments.models import Wallet, WalletKind

# --- Blocks and proofs -----------------------------------------------------------------


def blocks() -> QuerySet[Block]:
    return Block.objects.order_by("-height")


def block_by_height_or_hash(key: str) -> Block | None:
    if key.isascii() and key.isdigit() and len(key) < 19:
        return Block.objects.filter(height=int(key)).first()
    if len(key) == 64:
        return Block.objects.filter(hash=key.lower()).first()
    return None


def block_leaves(block: Block) -> QuerySet[BlockLeaf]:
    return BlockLeaf.objects.filter(block=block).order_by("position")


def sealed_leaves() -> QuerySet[BlockLeaf]:
    """Every sealed receipt and ledger transaction, newest first."""
    return BlockLeaf.objects.select_related("block").order_by("-block_id", "-position")


def leaf_by_hash(leaf_hash: str) -> BlockLeaf | None:
    if len(leaf_hash) != 64:
        return None
    return sealed_leaves().filter(leaf_hash=leaf_hash.lower()).last()


def leaf_of_receipt(receipt_id: str) -> BlockLeaf | None:
    return BlockLeaf.objects.select_related("block").filter(kind=LeafKind.RECEIPT, ref=receipt_id).first()


def leaf_proof(leaf: BlockLeaf) -> dict:
    """The RFC 6962 audit path of ``leaf`` in its block, hex encoded."""
    hashes = [bytes.fromhex(h) for h in block_leaves(leaf.block).values_list("leaf_hash", flat=True)]
    path = merkle.inclusion_path(leaf.position, hashes)
    return {
        "leaf_hash": leaf.leaf_hash,
        "siblings": [{"position": side, "hash": sibling.hex()} for side, sibling in path],
        "merkle_root": leaf.block.merkle_root,
        "block_height": leaf.block.height,
        "block_hash": leaf.block.hash,
    }


def leaf_documents(leaves) -> dict[tuple[str, str], dict]:
    """The documents of sealed leaves, keyed ``(kind, ref)``: one read per kind."""
    refs = defaultdict(list)
    for leaf in leaves:
        refs[leaf.kind].append(leaf.ref)
    return {
        (kind, ref): document
        for kind, kind_refs in refs.items()
        for ref, document in leaf_source(kind).documents(kind_refs).items()
    }


def with_documents(leaves) -> list[BlockLeaf]:
    """``leaves``, each with its ``document`` (``leaf_documents``; None for an item gone since)."""
    leaves = list(leaves)
    documents = leaf_documents(leaves)
    for leaf in leaves:
        leaf.document = documents.get((leaf.kind, leaf.ref))
    return leaves


def explorer_receipts() -> QuerySet[Receipt]:
    sealed_in = BlockLeaf.objects.filter(kind=LeafKind.RECEIPT, ref=OuterRef("receipt_id")).values("block_id")[:1]
    return (
        Receipt.objects.annotate(block_height=Subquery(sealed_in))
        .prefetch_related("attestations")
        .order_by("-created_at", "-receipt_id")
    )


def with_public_documents(receipts) -> list[Receipt]:
    """``receipts``, each with ``public``: what the public explorer shows of it (``Receipt.public_document``)."""
    receipts = list(receipts)
    for receipt in receipts:
        receipt.public = receipt.public_document()
    return receipts


# --- Addresses (the ledger's wallets) ----------------------------------------------------


def jsonable(value):
    if isinstance(value, Decimal):
        return signing.decimal_text(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def wallet_summary(wallet) -> dict:
    return {"address": wallet.address, "balance": signing.decimal_text(wallet.balance)}


def wallet_entries(wallet):
    # Each entry shows its whole transaction: read them all in three queries.
    return ledger.wallet_entries(wallet).prefetch_related("transaction__entries__wallet")


def entry_document(entry) -> dict:
    """A ledger entry for the explorer: its amount and its transaction (with the leaf hash it seals under)."""
    transaction = ledger.transaction_document(entry.transaction)
    return jsonable(
        {
            "id": entry.pk,
            "amount": entry.amount,
            "transaction": transaction,
            "transaction_hash": merkle.leaf_hash(signing.canonical_json(transaction)).hex(),
        }
    )


# --- Network figures ---------------------------------------------------------------------

NETWORK_FIGURES_CACHE_KEY = "explorer:network-figures"
# The live figures: completed jobs of the last ``RECENT_WINDOW``. Finished jobs are found through
# the (status, created_at) index: one that finishes more than ``RECENT_LOOKBACK`` after its
# submission is left out.
RECENT_WINDOW = timedelta(minutes=5)
RECENT_LOOKBACK = timedelta(hours=1)
# What ``network.stats`` on ``ws/dashboard/`` carries: the network page's live figures.
LIVE_FIGURES = (
    "jobs_per_minute",
    "queue_depth",
    "median_wait_seconds",
    "median_run_seconds",
    "tokens_per_second",
    "miners_online",
)

logger = logging.getLogger(__name__)


def network_figures() -> dict:
    """Every figure of the network, the one place they are computed: ``/v1/stats``, the live
    feed's ``network.stats``, the network and explorer pages, the admin home, ``/metrics`` and
    ``/v1/metrics`` each show some of them.

    - ``jobs`` (by status), ``jobs_total``, ``jobs_completed_last_hour``; ``queue_depth`` (queued
      jobs by model) and ``queue_by_priority`` (rows of model, priority and depth);
    - ``miners`` (by status) and ``miners_online``;
    - ``receipts``, ``blocks``, ``height``, ``transactions`` (sealed), ``last_block_time``;
    - over the last ``RECENT_WINDOW``: ``jobs_per_minute`` completed, their
      ``median_wait_seconds`` (submission to last claim) and ``median_run_seconds``, and the
      ``tokens_per_second`` generated;
    - ``treasury_minted`` and ``fees_collected`` (AITBC).

    Shared by every process for ``EXPLORER_STATS_CACHE_SECONDS`` (counts are scans); computed
    afresh when the cache does not answer.
    """
    seconds = settings.EXPLORER_STATS_CACHE_SECONDS
    if not seconds:
        return _network_figures()
    figures = cache.get(NETWORK_FIGURES_CACHE_KEY)  # None while the cache (Redis) does not answer
    if figures is None:
        figures = _network_figures()
        cache.set(NETWORK_FIGURES_CACHE_KEY, figures, seconds)
    return figures


def live_network_figures() -> dict:
    """The figures of ``network.stats`` (``LIVE_FIGURES``)."""
    figures = network_figures()
    return {name: figures[name] for name in LIVE_FIGURES}


def _network_figures() -> dict:
    now = timezone.now()
    counts = Job.objects.aggregate(
        **{status.value: Count("id", filter=Q(status=status)) for status in JobStatus},
        completed_last_hour=Count(
            "id", filter=Q(status=JobStatus.COMPLETED, completed_at__gte=now - timedelta(hours=1))
        ),
    )
    jobs = {status.value: counts[status.value] for status in JobStatus}
    queue_by_priority = queue_depth_by_model()
    queue_depth: dict[str, int] = {}
    for row in queue_by_priority:
        queue_depth[row["model"]] = queue_depth.get(row["model"], 0) + row["depth"]
    miners = miner_counts()
    chain = Block.objects.aggregate(height=Max("height"), sealed=Sum("tx_count"), last=Max("timestamp"))
    balances = dict(
        Wallet.objects.filter(kind__in=[WalletKind.TREASURY, WalletKind.FEES]).values_list("kind", "balance")
    )
    return {
        "jobs": jobs,
        "jobs_total": sum(jobs.values()),
        "jobs_completed_last_hour": counts["completed_last_hour"],
        "queue_depth": queue_depth,
        "queue_by_priority": queue_by_priority,
        "miners": miners,
        "miners_online": miners[MinerStatus.ONLINE],
        "receipts": Receipt.objects.count(),
        "blocks": 0 if chain["height"] is None else chain["height"] + 1,
        "height": chain["height"],
        "transactions": chain["sealed"] or 0,
        "last_block_time": jsonable(chain["last"]),
        **_recent_figures(now),
        # The treasury mints by going negative: what it has minted is minus its balance.
        "treasury_minted": -balances.get(WalletKind.TREASURY, 0),
        "fees_collected": balances.get(WalletKind.FEES, 0),
    }


def _recent_figures(now) -> dict:
    since = now - RECENT_WINDOW
    finished = Job.objects.filter(
        status=JobStatus.COMPLETED, created_at__gte=since - RECENT_LOOKBACK, completed_at__gte=since
    )
    tokens = Cast(KT("usage__completion_tokens"), IntegerField())
    if connection.vendor == "postgresql":
        totals = finished.aggregate(
            count=Count("id"),
            tokens=Sum(tokens, default=0),
            wait=_Median(RawSQL("EXTRACT(EPOCH FROM started_at - created_at)", ())),
            run=_Median(RawSQL("EXTRACT(EPOCH FROM completed_at - started_at)", ())),
        )
    else:
        # SQLite (development) has no percentile function; its windows hold few jobs.
        rows = list(finished.annotate(tokens=tokens).values_list("created_at", "started_at", "completed_at", "tokens"))
        totals = {
            "count": len(rows),
            "tokens": sum(row[3] or 0 for row in rows),
            "wait": _median([(started - created).total_seconds() for created, started, _, _ in rows if started]),
            "run": _median([(completed - started).total_seconds() for _, started, completed, _ in rows if started]),
        }
    window = RECENT_WINDOW.total_seconds()
    return {
        "jobs_per_minute": round(totals["count"] * 60 / window, 2),
        "median_wait_seconds": _rounded(totals["wait"]),
        "median_run_seconds": _rounded(totals["run"]),
        "tokens_per_second": round(totals["tokens"] / window, 2),
    }


class _Median(Aggregate):
    function = "percentile_cont"
    template = "%(function)s(0.5) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _rounded(seconds) -> float | None:
    return None if seconds is None else round(float(seconds), 3)


# --- Chain audit -------------------------------------------------------------------------


def chain_problems(*, chunk_size: int = 200) -> Iterator[str]:
    """Re-verify the chain from genesis: each block's hash, signature and link, and every leaf
    recomputed from the rows as they are now. Yields one line per problem found."""
    trusted = signing.trusted_key_ids()
    expected_height, prev_hash = 0, None
    for block in Block.objects.order_by("height").prefetch_related("leaves").iterator(chunk_size=chunk_size):
        where = f"block {block.height}"
        if block.height != expected_height:
            yield f"{where}: expected height {expected_height} (blocks are missing)"
        header = signing.canonical_json(block.header())
        if hashlib.sha256(header).hexdigest() != block.hash:
            yield f"{where}: hash does not match its header"
        if block.proposer not in trusted:
            yield f"{where}: signed by an untrusted key {block.proposer}"
        elif verify.check_signature(
            header, {"alg": signing.ALGORITHM, "key_id": block.proposer, "sig": block.signature}
        ):
            yield f"{where}: signature does not match its header"
        if block.height == 0 and block.prev_hash != GENESIS_PREV_HASH:
            yield f"{where}: genesis must have prev_hash {GENESIS_PREV_HASH}"
        if prev_hash is not None and block.prev_hash != prev_hash:
            yield f"{where}: prev_hash does not link to block {block.height - 1}"
        yield from _leaf_problems(block)
        expected_height, prev_hash = block.height + 1, block.hash


def _leaf_problems(block: Block) -> Iterator[str]:
    where = f"block {block.height}"
    leaves = sorted(block.leaves.all(), key=lambda leaf: leaf.position)
    if [leaf.position for leaf in leaves] != list(range(len(leaves))) or len(leaves) != block.tx_count:
        yield f"{where}: has {len(leaves)} leaves at positions {[leaf.position for leaf in leaves]}, header says {block.tx_count}"
    current: dict[tuple[str, str], bytes] = {}
    for source in LEAF_SOURCES:
        refs = [leaf.ref for leaf in leaves if leaf.kind == source.kind]
        if not refs:
            continue
        current.update({(source.kind, ref): data for ref, data in source.current(refs).items()})
    recomputed = []
    for leaf in leaves:
        data = current.get((leaf.kind, leaf.ref))
        if data is None:
            yield f"{where}: {leaf.kind} {leaf.ref} (position {leaf.position}) is missing"
            recomputed.append(bytes.fromhex(leaf.leaf_hash))
            continue
        leaf_hash = merkle.leaf_hash(data)
        if leaf_hash.hex() != leaf.leaf_hash:
            yield f"{where}: {leaf.kind} {leaf.ref} (position {leaf.position}) was changed after sealing"
        recomputed.append(leaf_hash)
    if merkle.root(recomputed).hex() != block.merkle_root:
        yield f"{where}: merkle root does not match its leaves"


def receipt_public_key() -> dict:
    key = signing.coordinator_signing_key().verify_key
    return {"alg": signing.ALGORITHM, "key_id": signing.key_id(key), "public_key": bytes(key).hex()}


def receipt_verification(document, **given) -> dict:
    """Whether ``document`` is a receipt signed by one of our keys, with valid attestations, and
    committing to the ``payload`` and ``result`` given (with its ``opening``)."""
    valid, reason = verify.verify_receipt(document, sorted(signing.trusted_key_ids()), **given)
    return {"valid": True} if valid else {"valid": False, "reason": reason}
