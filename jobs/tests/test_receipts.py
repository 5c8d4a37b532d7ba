"""A completion issues its receipt the same way on PostgreSQL and SQLite."""

from decimal import Decimal

from explorer.models import LeafKind, PendingLeaf
from jobs.models import Receipt
from payments.models import LedgerTransaction


def test_a_paid_jobs_receipt_is_stored_after_its_escrow_and_before_its_settlement(
    client_api, miner_api, register_miner, submit_job
):
    register_miner(miner_api)
    job = submit_job(client_api, payment_amount="1")
    miner_api.post("/v1/miners/poll", {"max_wait_seconds": 0}, format="json")
    done = miner_api.post(f"/v1/miners/{job['job_id']}/result", {"result": {"output": "ok"}}, format="json")
    assert done.status_code == 200, done.content

    receipt = Receipt.objects.get(job_id=job["job_id"])
    transactions = dict(LedgerTransaction.objects.filter(job_id=job["job_id"]).values_list("business_key", "id"))
    queued = list(PendingLeaf.objects.order_by("id").values_list("kind", "ref"))
    escrow, settle = (str(transactions[f"{kind}:{job['job_id']}"]) for kind in ("escrow", "settle"))
    assert [leaf for leaf in queued if leaf[1] in {escrow, receipt.receipt_id, settle}] == [
        (LeafKind.TRANSACTION, escrow),
        (LeafKind.RECEIPT, receipt.receipt_id),
        (LeafKind.TRANSACTION, settle),
    ]
    # Signed before settling, the receipt names what the settlement then paid.
    charged = client_api.get(f"/v1/jobs/{job['job_id']}").json()["amount_charged"]
    assert Decimal(receipt.document["price"]) == Decimal(charged) > 0


def test_a_clients_pseudonym_is_computed_once_per_process_and_key(settings):
    from jobs import receipts

    first = receipts.client_pseudonym(424242)
    hits = receipts._pseudonym.cache_info().hits
    assert receipts.client_pseudonym(424242) == first
    assert receipts._pseudonym.cache_info().hits == hits + 1
    settings.SECRET_KEY = "another-secret-key-for-this-test"
    assert receipts.client_pseudonym(424242) != first
