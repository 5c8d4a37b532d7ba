import hashlib
import uuid

from django.db import connection
from django.utils import timezone

from explorer import signing
from explorer.models import Receipt


def sha256_of(value) -> str:
    return hashlib.sha256(signing.canonical_json(value)).hexdigest()


def _signed_receipt(job, *, provider: str, client: str) -> Receipt:
    usage = job.usage or {}
    payload = {
        "version": "1.0",
        "receipt_id": f"rcpt_{uuid.uuid4().hex}",
        "job_id": str(job.id),
        "provider": provider,
        "client": client,
        "status": job.status,
        "units": usage.get("units", usage.get("total_tokens", 0)),
        "unit_type": usage.get("unit_type", "tokens"),
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
    document = signing.sign(payload, signing.coordinator_signing_key())
    return Receipt(receipt_id=payload["receipt_id"], job=job, signed_json=signing.canonical_json(document).decode())


def receipts_issue(*, completed: list[tuple]) -> list[Receipt]:
    """Sign and store receipts for jobs the caller has just completed: ``(job, provider, client)`` each."""
    receipts = [_signed_receipt(job, provider=provider, client=client) for job, provider, client in completed]
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
