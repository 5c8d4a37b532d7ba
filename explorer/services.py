import hashlib
import time
import uuid
from collections import defaultdict

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import OuterRef, Subquery
from django.utils import timezone
from django.utils.crypto import salted_hmac

from core.crypto import merkle, signing
from core.errors import Invalid, NotFound, ServiceError
from explorer import verify
from explorer.models import GENESIS_PREV_HASH, Block, BlockLeaf, PendingLeaf, Receipt, ReceiptAttestation
from explorer.sources import Leaf, leaf_source
from miners.selectors import miner_for_owner

# The advisory lock that serialises sealers (one transaction, one block at a time): heights never fork.
_SEAL_LOCK_KEY = 0x61697462635F626C  # "aitbc_bl"

_CLIENT_PSEUDONYM_SALT = "aitbc.explorer.receipt-client"


def client_pseudonym(user_id) -> str:
    """The client as receipts name it: the same for every receipt of one client, and not to be told
    from its username or id without the server's ``SECRET_KEY`` (an HMAC under a key derived from it)."""
    return "clt_" + salted_hmac(_CLIENT_PSEUDONYM_SALT, str(user_id), algorithm="sha256").hexdigest()[:32]


def _signed_receipt(job, *, provider: str, price) -> Receipt:
    usage = job.usage or {}
    opening = {"input_salt": signing.new_salt(), "output_salt": signing.new_salt()}
    payload = {
        "version": "1.0",
        "receipt_id": f"rcpt_{uuid.uuid4().hex}",
        "job_id": str(job.id),
        "provider": provider,
        "client": client_pseudonym(job.client_id),
        "status": job.status,
        "units": usage.get("units", usage.get("total_tokens", 0)),
        "unit_type": usage.get("unit_type", "tokens"),
        "unit_price": signing.decimal_text(job.unit_price),
        "price": signing.decimal_text(price),
        "started_at": int(job.started_at.timestamp()),
        "completed_at": int(job.completed_at.timestamp()),
        "metadata": {
            "model": job.model,
            "attempt": job.attempt,
            "commitment": signing.COMMITMENT,
            "input_sha256": signing.commitment(opening["input_salt"], job.payload),
            "output_sha256": signing.commitment(opening["output_salt"], job.result),
            "usage": usage,
        },
    }
    _, signed_json = signing.signed_document(payload, signing.coordinator_signing_key())
    return Receipt(receipt_id=payload["receipt_id"], job=job, signed_json=signed_json.decode(), opening=opening)


def receipts_sign(*, completed: list[tuple]) -> list[Receipt]:
    """Signed, unsaved receipts for jobs as completed: ``(job, provider, price)`` each, the price
    being what the client pays for the job (None when it is free). The caller stores them (and
    their openings) in the transaction that completes the jobs."""
    return [_signed_receipt(job, provider=provider, price=price) for job, provider, price in completed]


def receipts_issue(*, completed: list[tuple]) -> list[Receipt]:
    """Sign and store receipts for jobs the caller has just completed: ``(job, provider, price)`` each."""
    receipts = receipts_sign(completed=completed)
    if receipts:
        # One multi-row INSERT written out: this runs for every completed job.
        now = connection.ops.adapt_datetimefield_value(timezone.now())
        rows = ", ".join(["(%s, %s, %s, %s, %s)"] * len(receipts))
        job_key = Receipt._meta.get_field("job").target_field
        opening = Receipt._meta.get_field("opening")
        params = [
            value
            for r in receipts
            for value in (
                r.receipt_id,
                job_key.get_db_prep_value(r.job_id, connection),
                r.signed_json,
                opening.get_db_prep_value(r.opening, connection),
                now,
            )
        ]
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO explorer_receipt (receipt_id, job_id, signed_json, opening, created_at) VALUES {rows}",
                params,
            )
    return receipts


def receipt_attest(*, receipt: Receipt, owner, alg: str, key_id: str, sig: str) -> tuple[ReceiptAttestation, bool]:
    """Record the co-signature of ``receipt`` by the miner that did its job (``owner``'s, or a
    403), verified against the key that miner registered.

    Returns ``(attestation, created)``; attesting twice with the same key returns the first.
    The receipt itself is not changed.
    """
    try:
        miner = miner_for_owner(owner=owner, miner_id=str(receipt.document.get("provider", "")))
    except NotFound:
        raise ServiceError(
            "Only the miner that did the job may attest its receipt.", code="NOT_RECEIPT_PROVIDER", status_code=403
        ) from None
    if not miner.public_key:
        raise Invalid("This miner registered no public key to attest with.", code="MINER_KEY_MISSING")
    try:
        miner_key_id = verify.key_id_of(verify.decode_public_key(miner.public_key))
    except ValueError:
        raise Invalid(
            "This miner's registered public key is not a 32-byte Ed25519 key (hex or base64).",
            code="MINER_KEY_UNUSABLE",
        ) from None
    if alg != signing.ALGORITHM:
        raise Invalid(f"Unsupported algorithm {alg!r}; use Ed25519.", code="UNSUPPORTED_ALGORITHM")
    try:
        given_key_id = verify.key_id_of(verify.decode_public_key(key_id))
    except ValueError:
        given_key_id = None
    if given_key_id != miner_key_id:
        raise Invalid("key_id is not the miner's registered public key.", code="ATTESTATION_KEY_MISMATCH")
    try:
        sig = verify.canonical_b64(sig)
    except ValueError:
        raise Invalid("sig must be base64 (URL-safe, no padding).", code="INVALID_ATTESTATION") from None
    signature = {"alg": alg, "key_id": miner_key_id, "sig": sig}
    if verify.check_signature(signing.signed_payload(receipt.document), signature):
        raise Invalid("The signature does not sign this receipt's payload.", code="INVALID_ATTESTATION")
    try:
        with transaction.atomic():
            return ReceiptAttestation.objects.get_or_create(
                receipt=receipt, key_id=miner_key_id, defaults={"alg": alg, "sig": sig}
            )
    except IntegrityError:  # the same attestation, posted twice at once
        return ReceiptAttestation.objects.get(receipt=receipt, key_id=miner_key_id), False


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
