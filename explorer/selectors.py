import hashlib
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, Max, OuterRef, QuerySet, Subquery, Sum

from core.crypto import merkle, signing
from explorer import verify
from explorer.models import GENESIS_PREV_HASH, Block, BlockLeaf, LeafKind
from explorer.sources import LEAF_SOURCES, leaf_source
from jobs.models import Job, JobStatus, Receipt
from miners.models import MinerStatus
from miners.selectors import miner_counts
from payments import selectors as ledger

STATS_CACHE_KEY = "explorer:network-stats"


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


def explorer_receipts() -> QuerySet[Receipt]:
    sealed_in = BlockLeaf.objects.filter(kind=LeafKind.RECEIPT, ref=OuterRef("receipt_id")).values("block_id")[:1]
    return (
        Receipt.objects.annotate(block_height=Subquery(sealed_in))
        .prefetch_related("attestations")
        .order_by("-created_at", "-receipt_id")
    )


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


# --- Network statistics ------------------------------------------------------------------


def network_stats() -> dict:
    """Jobs by status, miners, receipts and the chain's tip; cached for a few seconds (counts are scans)."""
    if settings.EXPLORER_STATS_CACHE_SECONDS:
        stats = cache.get(STATS_CACHE_KEY)
        if stats is None:
            stats = _network_stats()
            cache.set(STATS_CACHE_KEY, stats, settings.EXPLORER_STATS_CACHE_SECONDS)
        return stats
    return _network_stats()


def _network_stats() -> dict:
    by_status = dict(Job.objects.values_list("status").annotate(n=Count("id")).order_by())
    jobs = {status.value: by_status.get(status.value, 0) for status in JobStatus}
    chain = Block.objects.aggregate(height=Max("height"), sealed=Sum("tx_count"), last=Max("timestamp"))
    miners = miner_counts()
    return {
        "jobs": jobs,
        "jobs_total": sum(jobs.values()),
        "miners_online": miners[MinerStatus.ONLINE],
        "miners": miners,
        "receipts": Receipt.objects.count(),
        "blocks": 0 if chain["height"] is None else chain["height"] + 1,
        "height": chain["height"],
        "transactions": chain["sealed"] or 0,
        "last_block_time": jsonable(chain["last"]),
    }


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
