"""Receipts: signed when jobs complete, stored with them, co-signed later by the miner that did the job.

A receipt is issued by the completion of its job, on both backends in the same order: the jobs
are completed in memory (a paid job with its charge), their receipts signed, then both stored,
then the escrows settled (``jobs.services.jobs_complete``). On PostgreSQL the jobs and their
receipts are stored by one statement (``jobs.sql.COMPLETE``); elsewhere by ``receipts_store``.
The explorer seals stored receipts into blocks (a database trigger queues each one).
"""

import uuid
from functools import lru_cache

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.crypto import salted_hmac

from core.crypto import signing
from core.errors import Invalid, NotFound, ServiceError
from jobs.models import Job, Receipt, ReceiptAttestation
from miners.selectors import miner_for_owner

# Unchanged since receipts were the explorer's: a client's pseudonym must stay the same.
_CLIENT_PSEUDONYM_SALT = "aitbc.explorer.receipt-client"


def client_pseudonym(user_id) -> str:
    """The client as receipts name it: the same for every receipt of one client, and not to be told
    from its username or id without the server's ``SECRET_KEY`` (an HMAC under a key derived from it)."""
    return _pseudonym(settings.SECRET_KEY, str(user_id))


@lru_cache(maxsize=4096)
def _pseudonym(secret: str, user_id: str) -> str:
    # Every receipt names its client: computed once per client (and key) in each process.
    return "clt_" + salted_hmac(_CLIENT_PSEUDONYM_SALT, user_id, secret=secret, algorithm="sha256").hexdigest()[:32]


def _signed_receipt(job: Job, *, provider: str, price, verification: dict | None = None) -> Receipt:
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
    if verification is not None:
        payload["providers"] = verification["providers"]
        payload["metadata"]["verification"] = verification["metadata"]
    _, signed_json = signing.signed_document(payload, signing.coordinator_signing_key())
    return Receipt(receipt_id=payload["receipt_id"], job=job, signed_json=signed_json.decode(), opening=opening)


def receipts_sign(*, completed: list[tuple]) -> list[Receipt]:
    """Signed, unsaved receipts for jobs as completed: ``(job, provider, price)`` each, the price
    being what the client pays for the job (None when it is free). The caller stores them (and
    their openings) in the transaction that completes the jobs."""
    return [_signed_receipt(job, provider=provider, price=price) for job, provider, price in completed]


def receipt_sign_agreed(*, job: Job, providers: list[str], price, metadata: dict) -> Receipt:
    """The signed, unsaved receipt of a verified job's agreed answer: ``provider`` is the miner whose
    answer the others agreed with, ``providers`` every miner that agreed, and
    ``metadata.verification`` how they were judged (``metadata``)."""
    return _signed_receipt(
        job, provider=providers[0], price=price, verification={"providers": providers, "metadata": metadata}
    )


def receipts_store(receipts: list[Receipt]) -> None:
    """Store signed receipts (the jobs' completion does, in its transaction)."""
    if not receipts:
        return
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
            f"INSERT INTO {Receipt._meta.db_table} (receipt_id, job_id, signed_json, opening, created_at) "
            f"VALUES {rows}",
            params,
        )


def receipts_issue(*, completed: list[tuple]) -> list[Receipt]:
    """Sign and store receipts for jobs the caller has just completed: ``(job, provider, price)`` each."""
    receipts = receipts_sign(completed=completed)
    receipts_store(receipts)
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
        miner_key_id = signing.public_key_id(miner.public_key)
    except ValueError:
        raise Invalid(
            "This miner's registered public key is not a 32-byte Ed25519 key (hex or base64).",
            code="MINER_KEY_UNUSABLE",
        ) from None
    if alg != signing.ALGORITHM:
        raise Invalid(f"Unsupported algorithm {alg!r}; use Ed25519.", code="UNSUPPORTED_ALGORITHM")
    try:
        given_key_id = signing.public_key_id(key_id)
    except ValueError:
        given_key_id = None
    if given_key_id != miner_key_id:
        raise Invalid("key_id is not the miner's registered public key.", code="ATTESTATION_KEY_MISMATCH")
    try:
        sig = signing.b64url_canonical(sig)
    except ValueError:
        raise Invalid("sig must be base64 (URL-safe, no padding).", code="INVALID_ATTESTATION") from None
    if not signing.signs(signing.signed_payload(receipt.document), key_id=miner_key_id, sig=sig):
        raise Invalid("The signature does not sign this receipt's payload.", code="INVALID_ATTESTATION")
    try:
        with transaction.atomic():
            return ReceiptAttestation.objects.get_or_create(
                receipt=receipt, key_id=miner_key_id, defaults={"alg": alg, "sig": sig}
            )
    except IntegrityError:  # the same attestation, posted twice at once
        return ReceiptAttestation.objects.get(receipt=receipt, key_id=miner_key_id), False
