import hashlib
import io
import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from nacl.signing import VerifyKey

from core.crypto import signing
from explorer import selectors, services
from explorer.models import Block, BlockLeaf, LeafKind, PendingLeaf
from explorer.tasks import seal_block
from explorer.tests.independent import canonical, leaf, proof_leads_to_root, tree_root, unpadded_b64decode
from jobs.models import Receipt
from payments.models import LedgerEntry, LedgerTransaction
from payments.selectors import transaction_document
from payments.services import treasury_mint
from tests.factories import WalletFactory

pytestmark = pytest.mark.django_db


def run_verify_chain() -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("verify_chain", stdout=out, stderr=err)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, out.getvalue(), err.getvalue()


def test_first_seal_creates_an_empty_signed_genesis_block():
    assert services.block_seal() is None
    genesis = Block.objects.get()
    assert (genesis.height, genesis.tx_count, genesis.prev_hash) == (0, 0, "0" * 64)
    assert genesis.merkle_root == hashlib.sha256(b"").hexdigest()
    assert genesis.proposer == signing.coordinator_key_id()


def test_block_seals_waiting_receipts_over_their_stored_bytes(make_receipts):
    receipts = make_receipts(5)
    block = services.block_seal()
    assert (block.height, block.tx_count) == (1, 5)
    leaves = list(block.leaves.order_by("position"))
    stored = {r.receipt_id: r.signed_json.encode() for r in Receipt.objects.all()}
    assert {lf.ref for lf in leaves} == {r.receipt_id for r in receipts}
    assert [lf.leaf_hash for lf in leaves] == [leaf(stored[lf.ref]) for lf in leaves]
    assert block.merkle_root == tree_root([bytes.fromhex(lf.leaf_hash) for lf in leaves]).hex()
    assert services.block_seal() is None, "nothing is sealed twice"


def test_block_header_hash_and_signature_check_out_independently(make_receipts):
    make_receipts(2)
    block = services.block_seal()
    genesis = Block.objects.get(height=0)
    header = {
        "height": block.height,
        "prev_hash": block.prev_hash,
        "merkle_root": block.merkle_root,
        "timestamp": block.timestamp.isoformat().replace("+00:00", "Z"),
        "tx_count": block.tx_count,
        "proposer": block.proposer,
    }
    assert block.prev_hash == genesis.hash
    assert hashlib.sha256(canonical(header)).hexdigest() == block.hash
    VerifyKey(unpadded_b64decode(block.proposer)).verify(canonical(header), unpadded_b64decode(block.signature))


def test_blocks_are_sealed_in_chunks_of_block_max_leaves(settings, make_receipts):
    settings.BLOCK_MAX_LEAVES = 4
    make_receipts(10)
    sealed = services.blocks_seal_pending()
    assert [b.tx_count for b in sealed] == [4, 4, 2]
    assert [b.height for b in sealed] == [1, 2, 3]
    assert BlockLeaf.objects.count() == 10


def test_seal_block_actor_is_a_housekeeping_actor_that_seals(settings, make_receipts):
    from aitbc_site.scheduler import housekeeping_actors

    make_receipts(3)
    assert seal_block in housekeeping_actors()
    assert seal_block.queue_name == "housekeeping"
    assert seal_block.options["time_limit"] >= 3 * settings.BLOCK_SEAL_RUN_SECONDS * 1000
    seal_block()
    assert Block.objects.filter(height=1, tx_count=3).exists()


def test_seal_block_retries_a_run_the_database_interrupted_but_not_one_out_of_time(settings):
    from django.db import OperationalError
    from dramatiq.middleware import TimeLimitExceeded

    retry_when = seal_block.options["retry_when"]

    assert [retry_when(retries, OperationalError("server closed the connection")) for retries in range(4)] == [
        True,
        True,
        True,
        False,
    ]
    assert not retry_when(0, TimeLimitExceeded())
    assert not retry_when(0, ValueError("a bug"))
    assert seal_block.options["max_backoff"] <= settings.HOUSEKEEPING_INTERVAL_SECONDS * 1000


def test_a_receipt_that_committed_late_is_sealed_whatever_its_time(make_receipts):
    make_receipts(2)
    services.block_seal()
    late = make_receipts(1)[0]
    Receipt.objects.filter(pk=late.pk).update(created_at=timezone.now() - timedelta(days=1))
    block = services.block_seal()
    assert [lf.ref for lf in block.leaves.all()] == [late.receipt_id]
    assert services.block_seal() is None


def test_every_stored_item_waits_for_a_block_until_it_is_sealed(make_receipts, ledger):
    receipts = make_receipts(2)
    waiting = list(PendingLeaf.objects.values_list("kind", "ref"))
    assert waiting[:5] == [(LeafKind.TRANSACTION, str(tx.pk)) for tx in ledger]
    assert sorted(waiting[5:]) == sorted((LeafKind.RECEIPT, r.receipt_id) for r in receipts)
    services.blocks_seal_pending()
    assert not PendingLeaf.objects.exists()
    assert sorted(BlockLeaf.objects.values_list("kind", "ref")) == sorted(waiting)


def test_an_item_already_sealed_is_not_sealed_again_when_listed_twice(make_receipts):
    receipt = make_receipts(1)[0]
    PendingLeaf.objects.create(kind=LeafKind.RECEIPT, ref=receipt.pk)
    first = services.block_seal()
    PendingLeaf.objects.create(kind=LeafKind.RECEIPT, ref=receipt.pk)
    assert [lf.ref for lf in first.leaves.all()] == [receipt.pk]
    assert services.block_seal() is None
    assert not PendingLeaf.objects.exists()
    assert BlockLeaf.objects.count() == 1


@pytest.mark.parametrize("count", [1, 2, 3, 7, 17])
def test_receipt_proofs_verify_against_the_block_root(client, make_receipts, count):
    receipts = make_receipts(count)
    block = services.block_seal()
    for receipt in receipts:
        proof = client.get(f"/v1/receipts/{receipt.receipt_id}/proof").json()
        assert proof["block_height"] == block.height
        assert proof["merkle_root"] == block.merkle_root
        assert proof["leaf_hash"] == leaf(canonical(receipt.document))
        assert proof_leads_to_root(proof["leaf_hash"], proof["siblings"], proof["merkle_root"])


def test_proof_is_not_found_until_sealed(client, make_receipts):
    receipt = make_receipts(1)[0]
    response = client.get(f"/v1/receipts/{receipt.receipt_id}/proof")
    assert response.status_code == 404
    assert response.json()["error_code"] == "NOT_SEALED"
    assert client.get("/v1/receipts/rcpt_nope/proof").json()["error_code"] == "RECEIPT_NOT_FOUND"


def test_verify_chain_passes_on_a_clean_chain(settings, make_receipts):
    settings.BLOCK_MAX_LEAVES = 3
    make_receipts(7)
    services.blocks_seal_pending()
    code, out, err = run_verify_chain()
    assert code == 0, err
    assert "4 block(s)" in out


def test_verify_chain_reports_an_edited_receipt_row_with_its_id(make_receipts):
    receipts = make_receipts(3)
    services.block_seal()
    victim = receipts[1]
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE jobs_receipt SET signed_json = REPLACE(signed_json, %s, %s) WHERE receipt_id = %s",
            ['"units":5', '"units":50', victim.receipt_id],
        )
    assert Receipt.objects.get(pk=victim.pk).signed_json != victim.signed_json
    code, _, err = run_verify_chain()
    assert code == 1
    assert f"receipt {victim.receipt_id}" in err
    assert "changed after sealing" in err
    assert receipts[0].receipt_id not in err


def test_verify_chain_reports_a_broken_link_and_a_forged_header(make_receipts):
    make_receipts(1)
    services.block_seal()
    make_receipts(1)
    services.block_seal()
    Block.objects.filter(height=2).update(prev_hash="ab" * 32)
    Block.objects.filter(height=1).update(tx_count=9)
    code, _, err = run_verify_chain()
    assert code == 1
    assert "block 2: prev_hash does not link to block 1" in err
    assert "block 1: hash does not match its header" in err


def test_verify_chain_reports_a_deleted_leaf(make_receipts):
    make_receipts(2)
    block = services.block_seal()
    BlockLeaf.objects.filter(block=block, position=1).delete()
    code, _, err = run_verify_chain()
    assert code == 1
    assert "block 1: has 1 leaves" in err


def mint(amount: str):
    return treasury_mint(wallet=WalletFactory(user__username="carol"), amount=amount)


@pytest.fixture
def ledger(settings):
    """Five ledger transactions, oldest first: mints into a wallet opened without welcome credits."""
    settings.AITBC_WELCOME_CREDITS = 0
    minted = [mint(f"{i}.5").pk for i in range(1, 6)]
    return list(LedgerTransaction.objects.filter(pk__in=minted).order_by("id").prefetch_related("entries__wallet"))


def sealed_document(tx) -> dict:
    """The transaction as the explorer shows it once sealed: its canonical JSON, read back."""
    return json.loads(canonical(transaction_document(tx)))


def test_ledger_transactions_are_sealed_in_the_order_stored_and_prove_by_hash(client, make_receipts, ledger):
    receipts = make_receipts(2)
    block = services.block_seal()
    leaves = list(block.leaves.order_by("position"))
    assert [(lf.kind, lf.ref) for lf in leaves[:5]] == [(LeafKind.TRANSACTION, str(tx.pk)) for tx in ledger]
    assert sorted((lf.kind, lf.ref) for lf in leaves[5:]) == sorted((LeafKind.RECEIPT, r.receipt_id) for r in receipts)
    tx_leaf = leaves[1]
    assert tx_leaf.leaf_hash == leaf(canonical(transaction_document(ledger[1])))
    proof = client.get(f"/v1/explorer/transactions/{tx_leaf.leaf_hash}/proof").json()
    assert proof_leads_to_root(proof["leaf_hash"], proof["siblings"], block.merkle_root)
    detail = client.get(f"/v1/explorer/transactions/{tx_leaf.leaf_hash}").json()
    assert detail["document"] == sealed_document(ledger[1])
    assert detail["kind"] == "transaction"


def test_ledger_source_seals_only_new_transactions(ledger):
    services.block_seal()
    new = mint("1")
    block = services.block_seal()
    assert [lf.ref for lf in block.leaves.all()] == [str(new.pk)]


def test_verify_chain_reports_an_edited_ledger_transaction(ledger):
    services.block_seal()
    if connection.vendor == "postgresql":  # edited as the table's owner could: past the append-only trigger
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # ALTER TABLE waits for no deferred check
            cursor.execute("ALTER TABLE payments_ledgerentry DISABLE TRIGGER payments_ledgerentry_append_only")
    LedgerEntry.objects.filter(transaction=ledger[2], amount__gt=0).update(amount=1000)
    code, _, err = run_verify_chain()
    assert code == 1
    assert f"transaction {ledger[2].pk} (position 2) was changed after sealing" in err


def test_ledger_transactions_of_real_payments_are_sealed(client):
    wallet = WalletFactory(user__username="carol")
    minted = treasury_mint(wallet=wallet, amount="7.5")
    posted = list(LedgerTransaction.objects.all())
    assert minted.pk in {tx.pk for tx in posted}

    services.blocks_seal_pending()
    sealed = {row.ref: row for row in BlockLeaf.objects.filter(kind=LeafKind.TRANSACTION)}
    assert set(sealed) == {str(tx.pk) for tx in posted}
    mint_leaf = sealed[str(minted.pk)]
    proof = client.get(f"/v1/explorer/transactions/{mint_leaf.leaf_hash}/proof").json()
    assert proof_leads_to_root(proof["leaf_hash"], proof["siblings"], proof["merkle_root"])
    detail = client.get(f"/v1/explorer/transactions/{mint_leaf.leaf_hash}").json()
    assert detail["document"]["id"] == minted.pk
    assert mint_leaf.leaf_hash == leaf(canonical(detail["document"]))
    code, _, err = run_verify_chain()
    assert code == 0, err
    assert services.block_seal() is None


def test_seal_blocks_command_reports_what_it_sealed(make_receipts):
    make_receipts(2)
    out = io.StringIO()
    call_command("seal_blocks", stdout=out)
    assert "block 1: 2 leaves" in out.getvalue()
    assert "sealed 1 block(s)" in out.getvalue()


def test_block_leaf_documents_are_returned_per_kind(make_receipts):
    receipts = make_receipts(2)
    services.block_seal()
    documents = selectors.leaf_documents(BlockLeaf.objects.all())
    assert documents[(LeafKind.RECEIPT, receipts[0].receipt_id)] == json.loads(receipts[0].signed_json)


def test_the_database_refuses_to_seal_a_leaf_twice(make_receipts):
    from django.db import IntegrityError, transaction

    receipt = make_receipts(1)[0]
    block = services.block_seal()
    with pytest.raises(IntegrityError), transaction.atomic():
        BlockLeaf.objects.create(block=block, position=1, kind=LeafKind.RECEIPT, ref=receipt.pk, leaf_hash="00" * 32)


def test_a_paid_jobs_receipt_escrow_and_settlement_each_wait_for_a_block(
    client_api, miner_api, register_miner, submit_job
):
    register_miner(miner_api)
    job = submit_job(client_api, payment_amount="1")
    poll = miner_api.post("/v1/miners/poll", {"max_wait_seconds": 0}, format="json").json()
    done = miner_api.post(f"/v1/miners/{job['job_id']}/result", {"result": {"output": "ok"}}, format="json")
    assert (poll["job_id"], done.status_code) == (job["job_id"], 200)
    receipt = Receipt.objects.get(job_id=job["job_id"])
    business_keys = dict(LedgerTransaction.objects.filter(job_id=job["job_id"]).values_list("business_key", "id"))

    waiting = set(PendingLeaf.objects.values_list("kind", "ref"))
    assert {
        (LeafKind.RECEIPT, receipt.receipt_id),
        (LeafKind.TRANSACTION, str(business_keys[f"escrow:{job['job_id']}"])),
        (LeafKind.TRANSACTION, str(business_keys[f"settle:{job['job_id']}"])),
    } <= waiting
    services.blocks_seal_pending()
    assert not PendingLeaf.objects.exists()
    assert waiting == set(BlockLeaf.objects.values_list("kind", "ref"))
