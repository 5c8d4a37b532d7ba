import io
import json
import time

import pytest
from django.core.cache import cache
from django.core.management import call_command
from nacl.signing import SigningKey
from rest_framework.test import APIClient

from accounts.services import user_get_or_create
from core.crypto import signing
from explorer import selectors, services
from explorer.tests.independent import payload_of, unpadded_b64encode
from jobs.models import Receipt
from payments.services import treasury_mint, wallet_open

pytestmark = pytest.mark.django_db

EXPLORER_LISTS = ["blocks", "transactions", "addresses", "receipts"]


@pytest.fixture
def anonymous():
    return APIClient()


def register_with_key(api, *, public_key: str | None = None, key=None) -> SigningKey:
    key = key or SigningKey.generate()
    body = {"capabilities": {"models": ["llama3.2"]}, "public_key": public_key or bytes(key.verify_key).hex()}
    response = api.post("/v1/miners/register", body, format="json")
    assert response.status_code == 200, response.content
    return key


def attestation_of(receipt: Receipt, key: SigningKey) -> dict:
    sig = key.sign(payload_of(receipt.document)).signature
    return {"alg": "Ed25519", "key_id": unpadded_b64encode(bytes(key.verify_key)), "sig": unpadded_b64encode(sig)}


# --- Receipts -------------------------------------------------------------------------------


def test_receipt_is_shown_to_its_client_the_provider_and_admin_only(
    make_api, client_api, other_client_api, miner_api, make_receipts, anonymous
):
    receipt = make_receipts(1)[0]
    url = f"/v1/receipts/{receipt.receipt_id}"
    assert client_api.get(url).json() == receipt.document
    assert miner_api.get(url).status_code == 200
    assert make_api("admin", "root").get(url).status_code == 200
    response = other_client_api.get(url)
    assert response.status_code == 404
    assert response.json()["error_code"] == "RECEIPT_NOT_FOUND"
    assert make_api("miner", "other-rig-owner").get(url).status_code == 404
    assert anonymous.get(url).status_code == 401


def test_receipt_list_shows_a_client_its_own_and_an_admin_everyones(
    make_api, client_api, other_client_api, make_receipts, django_assert_max_num_queries
):
    mine = make_receipts(3)
    theirs = make_receipts(2, client_name="bob")
    with django_assert_max_num_queries(6):
        body = client_api.get("/v1/receipts?limit=2").json()
    assert body["total"] == 3
    assert len(body["items"]) == 2
    assert {r["receipt_id"] for r in client_api.get("/v1/receipts").json()["items"]} == {r.pk for r in mine}
    admin = make_api("admin", "root")
    assert admin.get("/v1/receipts").json()["total"] == 5
    assert {r["receipt_id"] for r in admin.get("/v1/receipts?client=bob").json()["items"]} == {r.pk for r in theirs}
    assert client_api.get("/v1/receipts?client=bob").json()["total"] == 0
    job_id = mine[1].document["job_id"]
    assert [r["receipt_id"] for r in client_api.get(f"/v1/receipts?job_id={job_id}").json()["items"]] == [mine[1].pk]
    assert client_api.get("/v1/receipts?job_id=not-a-uuid").status_code == 422


def test_receipt_list_is_for_clients(miner_api):
    assert miner_api.get("/v1/receipts").status_code == 403


def test_public_key_names_the_key_receipts_are_signed_with(anonymous, make_receipts):
    receipt = make_receipts(1)[0]
    body = anonymous.get("/v1/receipts/public-key").json()
    assert body["alg"] == "Ed25519"
    assert body["key_id"] == receipt.document["signature"]["key_id"]
    assert unpadded_b64encode(bytes.fromhex(body["public_key"])) == body["key_id"]


def test_verify_accepts_our_receipts_and_rejects_changed_or_foreign_ones(anonymous, make_receipts):
    document = make_receipts(1)[0].document
    assert anonymous.post("/v1/receipts/verify", document, format="json").json() == {"valid": True}
    assert anonymous.post("/v1/receipts/verify", {"receipt": document}, format="json").json() == {"valid": True}
    changed = {**document, "units": document["units"] + 1}
    assert anonymous.post("/v1/receipts/verify", changed, format="json").json() == {
        "valid": False,
        "reason": "signature does not match",
    }
    foreign = signing.sign({k: v for k, v in document.items() if k != "signature"}, SigningKey.generate())
    assert anonymous.post("/v1/receipts/verify", foreign, format="json").json() == {
        "valid": False,
        "reason": "signed by an unknown key",
    }
    assert anonymous.post("/v1/receipts/verify", [1, 2], format="json").status_code == 422


@pytest.mark.parametrize("body", [None, {}, {"receipt": {}}, {"signature": {"alg": "Ed25519"}}])
def test_verify_without_a_receipt_is_422(anonymous, body):
    response = anonymous.post("/v1/receipts/verify", body, format="json" if body is not None else None)

    assert response.status_code == 422
    assert response.json()["error_code"] == "VALIDATION_ERROR"


def test_verify_trusts_earlier_keys_named_in_settings(settings, anonymous, make_receipts):
    document = make_receipts(1)[0].document
    old_key = SigningKey.generate()
    old = signing.sign({k: v for k, v in document.items() if k != "signature"}, old_key)
    assert anonymous.post("/v1/receipts/verify", old, format="json").json()["valid"] is False
    settings.RECEIPT_TRUSTED_KEY_IDS = [signing.key_id(old_key.verify_key)]
    assert anonymous.post("/v1/receipts/verify", old, format="json").json() == {"valid": True}


# --- Attestations ------------------------------------------------------------------------------


def test_provider_attests_with_its_registered_key_and_the_receipt_bytes_do_not_change(
    client_api, miner_api, submit_job, anonymous
):
    key = register_with_key(miner_api)
    job = submit_job(client_api, prompt="attest me")
    miner_api.post("/v1/miners/poll", {}, format="json")
    miner_api.post(f"/v1/miners/{job['job_id']}/result", {"result": {"output": "done"}}, format="json")
    receipt = Receipt.objects.get(job_id=job["job_id"])
    stored = receipt.signed_json

    attestation = attestation_of(receipt, key)
    response = miner_api.post(f"/v1/receipts/{receipt.pk}/attestations", attestation, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["attestations"] == [attestation]
    assert Receipt.objects.get(pk=receipt.pk).signed_json == stored

    served = client_api.get(f"/v1/receipts/{receipt.pk}").json()
    assert served["attestations"] == [attestation]
    assert served["signature"] == receipt.document["signature"]
    assert anonymous.post("/v1/receipts/verify", served, format="json").json() == {"valid": True}
    again = miner_api.post(f"/v1/receipts/{receipt.pk}/attestations", attestation, format="json")
    assert again.status_code == 200
    assert again.json()["attestations"] == [attestation]


def test_attestation_with_a_bad_signature_is_rejected(miner_api, make_receipts):
    key = register_with_key(miner_api)
    receipt = make_receipts(1)[0]
    attestation = attestation_of(receipt, key)
    forged = {**attestation, "sig": unpadded_b64encode(key.sign(b"something else").signature)}
    response = miner_api.post(f"/v1/receipts/{receipt.pk}/attestations", forged, format="json")
    assert response.status_code == 422
    assert response.json()["error_code"] == "INVALID_ATTESTATION"
    assert not receipt.attestations.exists()


def test_attestation_by_another_key_than_the_registered_one_is_rejected(miner_api, make_receipts):
    register_with_key(miner_api)
    receipt = make_receipts(1)[0]
    response = miner_api.post(
        f"/v1/receipts/{receipt.pk}/attestations", attestation_of(receipt, SigningKey.generate()), format="json"
    )
    assert response.status_code == 422
    assert response.json()["error_code"] == "ATTESTATION_KEY_MISMATCH"


def test_attestation_needs_a_registered_key(miner_api, register_miner, make_receipts):
    register_miner(miner_api)
    receipt = make_receipts(1)[0]
    response = miner_api.post(
        f"/v1/receipts/{receipt.pk}/attestations", attestation_of(receipt, SigningKey.generate()), format="json"
    )
    assert response.status_code == 422
    assert response.json()["error_code"] == "MINER_KEY_MISSING"


def test_attestation_from_a_miner_that_did_not_do_the_job_is_forbidden(make_api, client_api, make_receipts):
    receipt = make_receipts(1)[0]
    stranger = make_api("miner", "stranger", miner_id="rig-9")
    key = register_with_key(stranger)
    response = stranger.post(f"/v1/receipts/{receipt.pk}/attestations", attestation_of(receipt, key), format="json")
    assert response.status_code == 403
    assert response.json()["error_code"] == "NOT_RECEIPT_PROVIDER"
    assert client_api.post(f"/v1/receipts/{receipt.pk}/attestations", {}, format="json").status_code == 403


def test_attestation_accepts_a_key_registered_as_base64(miner_api, make_receipts):
    key = SigningKey.generate()
    register_with_key(miner_api, key=key, public_key=unpadded_b64encode(bytes(key.verify_key)))
    receipt = make_receipts(1)[0]
    response = miner_api.post(f"/v1/receipts/{receipt.pk}/attestations", attestation_of(receipt, key), format="json")
    assert response.status_code == 201


# --- Explorer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/v1/explorer", "/explorer"])
@pytest.mark.parametrize("name", EXPLORER_LISTS)
def test_explorer_lists_are_public_and_paginated(anonymous, make_receipts, prefix, name):
    make_receipts(2)
    services.block_seal()
    body = anonymous.get(f"{prefix}/{name}?limit=1").json()
    assert set(body) >= {"items", "next_offset"}


def test_explorer_blocks_page_newest_first(anonymous, settings, make_receipts, django_assert_max_num_queries):
    settings.BLOCK_MAX_LEAVES = 1
    make_receipts(3)
    services.blocks_seal_pending()
    with django_assert_max_num_queries(1):
        first = anonymous.get("/v1/explorer/blocks?limit=2").json()
    assert [b["height"] for b in first["items"]] == [3, 2]
    assert first["next_offset"] == 2
    rest = anonymous.get("/v1/explorer/blocks?limit=2&offset=2").json()
    assert [b["height"] for b in rest["items"]] == [1, 0]
    assert rest["next_offset"] is None
    block = first["items"][0]
    assert set(block) == {"height", "hash", "timestamp", "txCount", "proposer", "merkle_root", "prev_hash"}
    assert block["prev_hash"] == first["items"][1]["hash"]
    assert block["txCount"] == 1


def test_explorer_block_by_height_or_hash(anonymous, make_receipts):
    receipts = make_receipts(2)
    block = services.block_seal()
    by_height = anonymous.get(f"/v1/explorer/blocks/{block.height}").json()
    assert anonymous.get(f"/explorer/blocks/{block.hash}").json() == by_height
    assert {t["ref"] for t in by_height["transactions"]} == {r.pk for r in receipts}
    assert by_height["signature"] == block.signature
    for missing in ("99", "f" * 64, "nonsense"):
        assert anonymous.get(f"/v1/explorer/blocks/{missing}").json()["error_code"] == "BLOCK_NOT_FOUND"


def test_explorer_transactions_show_sealed_documents(anonymous, make_receipts, django_assert_max_num_queries):
    receipts = make_receipts(3)
    services.block_seal()
    with django_assert_max_num_queries(4):
        items = anonymous.get("/v1/explorer/transactions").json()["items"]
    assert [i["position"] for i in items] == [2, 1, 0]
    by_ref = {r.pk: r for r in receipts}
    for item in items:
        assert item["kind"] == "receipt"
        assert item["document"] == by_ref[item["ref"]].document
        assert anonymous.get(f"/v1/explorer/transactions/{item['hash']}").json() == item
    missing = anonymous.get("/v1/explorer/transactions/" + "0" * 64)
    assert missing.json()["error_code"] == "TRANSACTION_NOT_FOUND"


def test_explorer_receipts_carry_the_public_document(anonymous, make_receipts, django_assert_max_num_queries):
    receipts = make_receipts(3)
    services.block_seal()
    make_receipts(1)
    with django_assert_max_num_queries(3):
        items = anonymous.get("/v1/explorer/receipts").json()["items"]
    assert len(items) == 4
    item = next(i for i in items if i["receiptId"] == receipts[0].pk)
    assert item["payload"] == receipts[0].document
    assert item["jobId"] == receipts[0].document["job_id"]
    assert (item["miner"], item["status"], item["blockHeight"]) == ("miner-1", "completed", 1)
    assert item["issuedAt"].endswith("Z")
    assert [i["blockHeight"] for i in items].count(None) == 1


@pytest.mark.parametrize("url", ["/v1/stats", "/v1/explorer/stats", "/explorer/stats"])
def test_network_stats(anonymous, make_receipts, url):
    make_receipts(2)
    services.block_seal()
    stats = anonymous.get(url).json()
    assert stats["jobs"]["completed"] == 2
    assert stats["jobs_total"] == 2
    assert stats["receipts"] == 2
    assert (stats["blocks"], stats["height"], stats["transactions"]) == (2, 1, 2)
    assert stats["miners_online"] == 1
    assert stats["last_block_time"].endswith("Z")


def test_network_stats_say_exactly_what_they_always_said(anonymous):
    assert list(anonymous.get("/v1/stats").json()) == [
        "jobs", "jobs_total", "miners_online", "miners", "receipts", "blocks", "height", "transactions",
        "last_block_time",
    ]  # fmt: skip


@pytest.mark.usefixtures("hanging_cache")
def test_network_stats_answer_at_once_while_the_cache_hangs(settings, anonymous, make_receipts):
    settings.EXPLORER_STATS_CACHE_SECONDS = 5
    make_receipts(1)
    started = time.monotonic()
    responses = [anonymous.get("/v1/stats") for _ in range(3)]
    took = time.monotonic() - started

    assert [response.status_code for response in responses] == [200, 200, 200]
    assert (responses[-1].json()["jobs_total"], responses[-1].json()["receipts"]) == (1, 1)
    assert took < 3  # the first waits a second for Redis; the others do not ask it


def test_network_stats_are_shared_for_a_few_seconds(settings, anonymous, make_receipts):
    settings.EXPLORER_STATS_CACHE_SECONDS = 5
    cache.delete(selectors.NETWORK_FIGURES_CACHE_KEY)
    make_receipts(1)
    assert anonymous.get("/v1/stats").json()["receipts"] == 1
    make_receipts(1)
    assert anonymous.get("/v1/stats").json()["receipts"] == 1
    cache.delete(selectors.NETWORK_FIGURES_CACHE_KEY)
    assert anonymous.get("/v1/stats").json()["receipts"] == 2


def test_explorer_is_rate_limited_for_anonymous_callers(settings, anonymous):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "anonymous": "2/min"}
    statuses = [anonymous.get("/v1/explorer/blocks").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_explorer_addresses_come_from_the_ledger(settings, anonymous):
    settings.AITBC_WELCOME_CREDITS = 0
    wallets = [wallet_open(user=user_get_or_create(username=f"holder-{i}")) for i in range(3)]
    for wallet, amount in zip(wallets[:2], ("0.5", "1.5"), strict=True):
        treasury_mint(wallet=wallet, amount=amount)
    for amount in ("0.1", "0.2", "0.3", "0.4", "1.5"):
        treasury_mint(wallet=wallets[2], amount=amount)
    listed = anonymous.get("/v1/explorer/addresses?limit=2").json()
    assert listed["items"] == [
        {"address": wallets[0].address, "balance": "0.5"},
        {"address": wallets[1].address, "balance": "1.5"},
    ]
    assert listed["next_offset"] == 2
    detail = anonymous.get(f"/explorer/addresses/{wallets[2].address}?limit=3").json()
    assert (detail["address"], detail["balance"]) == (wallets[2].address, "2.5")
    assert [entry["amount"] for entry in detail["entries"]] == ["1.5", "0.4", "0.3"]
    assert detail["next_offset"] == 3
    assert anonymous.get("/v1/explorer/addresses/ait1nobody").json()["error_code"] == "ADDRESS_NOT_FOUND"


def test_explorer_address_of_a_real_wallet(anonymous):
    wallet = wallet_open(user=user_get_or_create(username="dave"))
    treasury_mint(wallet=wallet, amount="2")
    detail = anonymous.get(f"/v1/explorer/addresses/{wallet.address}").json()
    wallet.refresh_from_db()
    assert detail["balance"] == signing.decimal_text(wallet.balance)
    assert detail["entries"][0]["amount"] == "2"
    assert detail["entries"][0]["transaction"]["entries"]


# --- Offline verification -----------------------------------------------------------------------


def run_verify_receipt(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("verify_receipt", *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, out.getvalue(), err.getvalue()


def test_verify_receipt_command_checks_a_file(tmp_path, make_receipts):
    receipt = make_receipts(1)[0]
    path = tmp_path / "receipt.json"
    path.write_text(receipt.signed_json)
    code, out, _ = run_verify_receipt(str(path))
    assert code == 0
    assert out.startswith("valid")
    our_key = bytes(signing.coordinator_signing_key().verify_key).hex()
    assert run_verify_receipt(str(path), "--public-key", our_key)[0] == 0
    other_key = bytes(SigningKey.generate().verify_key).hex()
    code, _, err = run_verify_receipt(str(path), "--public-key", other_key)
    assert (code, err.strip()) == (1, "invalid: signed by an unknown key")

    path.write_text(receipt.signed_json.replace('"units":5', '"units":6'))
    code, _, err = run_verify_receipt(str(path))
    assert (code, err.strip()) == (1, "invalid: signature does not match")


def test_verify_receipt_command_reads_an_api_response(tmp_path, make_receipts):
    receipt = make_receipts(1)[0]
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"job_id": "x", "receipt": receipt.document}))
    assert run_verify_receipt(str(path))[0] == 0


def test_offline_verifier_runs_without_django(tmp_path, make_receipts):
    import subprocess
    import sys

    receipt = make_receipts(1)[0]
    path = tmp_path / "receipt.json"
    path.write_text(receipt.signed_json)
    script = "import sys; sys.modules['django'] = None; from explorer.verify import main; sys.exit(main([sys.argv[1]]))"
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "valid"


def test_attestation_signature_is_stored_in_its_canonical_spelling(miner_api, make_receipts):
    key = register_with_key(miner_api)
    receipt = make_receipts(1)[0]
    attestation = attestation_of(receipt, key)
    padded = {**attestation, "sig": attestation["sig"] + "=="}
    response = miner_api.post(f"/v1/receipts/{receipt.pk}/attestations", padded, format="json")
    assert response.status_code == 201
    assert response.json()["attestations"] == [attestation]


def test_staff_verify_the_chain_from_the_block_admin(admin_client, make_receipts):
    make_receipts(2)
    services.block_seal()
    assert admin_client.get("/admin/explorer/block/").status_code == 200
    assert admin_client.get("/admin/explorer/block/1/change/").status_code == 200
    response = admin_client.post(
        "/admin/explorer/block/", {"action": "verify_chain", "_selected_action": ["1"]}, follow=True
    )
    assert "The chain verifies from genesis." in response.content.decode()
