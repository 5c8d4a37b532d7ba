"""An execution's receipt: a Merkle root over its steps' receipts, signed by the coordinator.

The signed document lists each step's receipt id and leaf hash (RFC 6962: SHA-256 of 0x00 and
the receipt as signed) in step order, and the root over them. It is served with the step
receipts themselves, so anyone can check it offline (``explorer.verify.verify_execution_receipt``,
or ``manage.py verify_receipt``): the coordinator's signature, each step receipt's, each leaf, the
root. A step receipt changed in any way fails.
"""

from core.crypto import merkle, signing
from core.crypto.signing import canonical_json
from jobs.selectors import latest_receipts

VERSION = "1"


def execution_receipt(execution, rows: dict) -> dict:
    """The receipt bundle of a completed ``execution`` whose step rows are ``rows`` (by step id)."""
    step_receipts, leaves, steps = [], [], []
    latest = latest_receipts(job_ids=[row.job_id for row in rows.values()])
    for step_id in sorted(rows):
        receipt = latest[rows[step_id].job_id]
        document = receipt.document
        issued = {key: value for key, value in document.items() if key != "attestations"}
        leaf = merkle.leaf_hash(canonical_json(issued))
        leaves.append(leaf)
        step_receipts.append(document)
        steps.append({"step_id": step_id, "receipt_id": receipt.receipt_id, "leaf_hash": leaf.hex()})
    payload = {
        "version": VERSION,
        "type": "workflow_execution",
        "execution_id": str(execution.pk),
        "workflow_id": str(execution.workflow_id) if execution.workflow_id else None,
        "status": "completed",
        "total_cost": signing.decimal_text(execution.total_cost),
        "completed_at": int(execution.completed_at.timestamp()),
        "steps": steps,
        "merkle_root": merkle.root(leaves).hex(),
    }
    document, _ = signing.signed_document(payload, signing.coordinator_signing_key())
    return {"receipt": document, "step_receipts": step_receipts}
