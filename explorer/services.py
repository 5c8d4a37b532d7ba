import hashlib
import uuid

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from aitbc_site.errors import Invalid, NotFound, ServiceError
from explorer import merkle, signing, verify
from explorer.models import GENESIS_PREV_HASH, Block, BlockLeaf, Receipt, ReceiptAttestation
from explorer.sources import LEAF_SOURCES, Leaf
from miners.selectors import miner_for_owner

# pg_advisory_xact_lock key that serialises sealers: heights never fork.
_SEAL_LOCK_KEY = 0x61697462635F626C  # "aitbc_bl"


def sha256_of(value) -> str:
    return hashlib.sha256(signing.canonical_json(value)).hexdigest()


def _signed_receipt(job, *, provider: str, client: str) -> Receipt:
    usage = job.usage or {}
    # What the client paid: the settled charge, else the amount held.
    price = job.amount_charged if job.amount_charged is not None else job.price
    payload = {
        "version": "1.0",
        "receipt_id": f"rcpt_{uuid.uuid4().hex}",
        "job_id": str(job.id),
        "provider": provider,
        "client": client,
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
            "input_sha256": sha256_of(job.payload),
            "output_sha256": sha256_of(job.result),
            "usage": usage,
        },
    }
    _, signed_json = signing.signed_document(payload, signing.coordinator_signing_key())
    return Receipt(receipt_id=payload["receipt_id"], job=job, signed_json=signed_json.decode())


def receipts_sign(*, completed: list[tuple]) -> list[Receipt]:
    """Signed, unsaved receipts for jobs as completed: ``(job, provider, client)`` each. The caller
    stores them in the transaction that completes the jobs."""
    return [_signed_receipt(job, provider=provider, client=client) for job, provider, client in completed]


def receipts_issue(*, completed: list[tuple]) -> list[Receipt]:
    """Sign and store receipts for jobs the caller has just completed: ``(job, provider, client)`` each."""
    receipts = receipts_sign(completed=completed)
    if receipts:
        # One multi-row INSERT written out: this runs for every completed job.
        now = connection.ops.adapt_datetimefield_value(timezone.now())
        rows = ", ".join(["(%s, %s, %s, %s)"] * len(receipts))
        job_key = Receipt._meta.get_field("job").target_field
        params = [
            value
            for r in receipts
            for value in (r.receipt_id, job_key.get_db_prep_value(r.job_id, connection), r.signed_json, now)
        ]
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO explorer_receipt (receipt_id, job_id, signed_json, created_at) VALUES {rows}", params
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


def _lock_chain() -> None:
    # On SQLite every write transaction already holds the database lock (IMMEDIATE mode).
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_SEAL_LOCK_KEY])


def block_seal(*, max_leaves: int | None = None, full_scan: bool = False) -> Block | None:
    """Seal the next block over up to ``max_leaves`` waiting receipts and ledger transactions.

    Creates the genesis block first if there is none. Returns None when nothing waits.
    ``full_scan`` looks for unsealed items further back than the usual look-back window.
    """
    limit = max_leaves or settings.BLOCK_MAX_LEAVES
    # Look before taking the chain's lock: an idle network opens no write transaction.
    if Block.objects.exists() and not any(s.pending(limit=1, full_scan=full_scan) for s in LEAF_SOURCES):
        return None
    with transaction.atomic():
        _lock_chain()
        tip = Block.objects.select_for_update().order_by("-height").first()
        now = timezone.now()
        if tip is None:
            tip = _block(height=0, prev_hash=GENESIS_PREV_HASH, leaves=[], timestamp=now)
            tip.save(force_insert=True)
        leaves: list[Leaf] = []
        for source in LEAF_SOURCES:
            if len(leaves) < limit:
                leaves += source.pending(limit=limit - len(leaves), full_scan=full_scan)
        if not leaves:
            return None
        block = _block(height=tip.height + 1, prev_hash=tip.hash, leaves=leaves, timestamp=max(now, tip.timestamp))
        block.save(force_insert=True)
        BlockLeaf.objects.bulk_create(
            BlockLeaf(block=block, position=position, kind=leaf.kind, ref=leaf.ref, leaf_hash=leaf.hash.hex())
            for position, leaf in enumerate(leaves)
        )
    return block


def blocks_seal_pending(*, max_blocks: int | None = None, full_scan: bool = False) -> list[Block]:
    """Seal blocks of at most ``BLOCK_MAX_LEAVES`` until nothing waits (or ``max_blocks`` are sealed)."""
    sealed = []
    for _ in range(max_blocks or settings.BLOCK_MAX_BLOCKS_PER_RUN):
        block = block_seal(full_scan=full_scan)
        if block is None:
            break
        sealed.append(block)
    return sealed
