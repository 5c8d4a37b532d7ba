"""Who asked what stays private: public data names no client and confirms no guess, while the
job's client, and whoever the client shows the receipt and its opening to, can check it."""

import hashlib
import io
import json

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from core.crypto import signing
from explorer import selectors, services, verify
from explorer.models import BlockLeaf, LeafKind
from explorer.tests.independent import canonical
from jobs.models import Job, Receipt
from jobs.receipts import client_pseudonym

pytestmark = pytest.mark.django_db

SECRET_PROMPT = "does my neighbour know about the surprise party"
ANSWER = {"output": "No, she has no idea."}


@pytest.fixture
def answered(client_api, miner_api, register_miner, submit_job) -> dict:
    """alice's paid job, answered and sealed, as alice reads it: its JobView and its result."""
    register_miner(miner_api)
    job = submit_job(client_api, prompt=SECRET_PROMPT, payment_amount="1")
    miner_api.post("/v1/miners/poll", {}, format="json")
    done = miner_api.post(f"/v1/miners/{job['job_id']}/result", {"result": ANSWER}, format="json")
    assert done.status_code == 200, done.content
    assert "receipt_opening" not in done.json(), "the miner is not given the client's opening"
    services.blocks_seal_pending()
    return {
        "job": client_api.get(f"/v1/jobs/{job['job_id']}").json(),
        "result": client_api.get(f"/v1/jobs/{job['job_id']}/result").json(),
    }


def bundle_of(answered: dict) -> dict:
    """What alice keeps, and shows to whoever should check the receipt."""
    return {
        "receipt": answered["result"]["receipt"],
        "opening": answered["result"]["receipt_opening"],
        "payload": answered["job"]["payload"],
        "result": answered["result"]["result"],
    }


def public_pages(client) -> dict[str, str]:
    """Every public explorer route and page, anonymously, over everything sealed."""
    api = ["/v1/explorer/blocks", "/v1/explorer/transactions", "/v1/explorer/addresses", "/v1/explorer/receipts"]
    api += ["/v1/explorer/stats", "/v1/stats"]
    pages = ["/explorer/", "/explorer/receipts/", "/network/"]
    for height in selectors.blocks().values_list("height", flat=True):
        api.append(f"/v1/explorer/blocks/{height}")
        pages.append(f"/explorer/blocks/{height}/")
    for leaf in BlockLeaf.objects.all():
        api += [f"/v1/explorer/transactions/{leaf.leaf_hash}", f"/v1/explorer/transactions/{leaf.leaf_hash}/proof"]
        pages.append(f"/explorer/transactions/{leaf.leaf_hash}/")
        if leaf.kind == LeafKind.RECEIPT:
            api.append(f"/v1/receipts/{leaf.ref}/proof")
    for wallet in client.get("/v1/explorer/addresses?limit=500").json()["items"]:
        api.append(f"/v1/explorer/addresses/{wallet['address']}")
        pages.append(f"/explorer/addresses/{wallet['address']}/")
    legacy = [url.removeprefix("/v1") for url in api if url.startswith("/v1/explorer/")]
    bodies = {}
    for url in api + legacy + pages:
        response = client.get(url)
        assert response.status_code == 200, url
        bodies[url] = response.content.decode()
    return bodies


def test_a_guessed_prompt_cannot_be_confirmed_from_anything_public(answered, client_api):
    payload = answered["job"]["payload"]
    guesses = {
        "input digest": hashlib.sha256(canonical(payload)).hexdigest(),
        "output digest": hashlib.sha256(canonical(ANSWER)).hexdigest(),
        "prompt": SECRET_PROMPT,
        "answer": ANSWER["output"],
        "username": client_api.user.username,
    }

    pages = public_pages(APIClient())

    assert len(pages) > 30
    for url, body in pages.items():
        for what, guess in guesses.items():
            assert guess not in body, f"{url} shows the {what}"
    (shown,) = APIClient().get("/v1/explorer/receipts").json()["items"]
    assert shown["payload"]["client"] == client_pseudonym(client_api.user.pk)
    assert shown["payload"]["metadata"]["commitment"] == "hmac-sha256"
    assert shown["payload"]["metadata"]["input_sha256"] != guesses["input digest"]


def test_the_client_verifies_its_receipt_against_its_input_and_output_with_the_opening(answered):
    bundle = bundle_of(answered)
    key = selectors.receipt_public_key()["public_key"]

    assert bundle["payload"]["prompt"] == SECRET_PROMPT
    assert verify.verify_receipt(
        bundle["receipt"], key, opening=bundle["opening"], payload=bundle["payload"], result=bundle["result"]
    ) == (True, None)
    assert APIClient().post("/v1/receipts/verify", bundle, format="json").json() == {"valid": True}


def test_a_third_party_given_the_receipt_and_its_opening_verifies_it_offline(answered, tmp_path):
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle_of(answered)))
    key = selectors.receipt_public_key()["public_key"]
    out, err = io.StringIO(), io.StringIO()

    call_command("verify_receipt", str(path), "--public-key", key, stdout=out, stderr=err)

    assert "the input and output match the receipt" in out.getvalue()
    assert verify.main([str(path), "--public-key", key]) == 0


def test_the_result_as_the_api_gives_it_and_the_payload_verify_offline(answered, tmp_path):
    (tmp_path / "result.json").write_text(json.dumps(answered["result"]))
    (tmp_path / "payload.json").write_text(json.dumps(answered["job"]["payload"]))

    assert verify.main([str(tmp_path / "result.json"), "--payload", str(tmp_path / "payload.json")]) == 0


def flipped(hex_text: str) -> str:
    return ("1" if hex_text[0] == "0" else "0") + hex_text[1:]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            lambda b: {**b, "opening": {**b["opening"], "input_salt": flipped(b["opening"]["input_salt"])}},
            "the input does not match the receipt's commitment",
        ),
        (
            lambda b: {**b, "opening": {**b["opening"], "output_salt": flipped(b["opening"]["output_salt"])}},
            "the output does not match the receipt's commitment",
        ),
        (lambda b: {**b, "opening": {"output_salt": b["opening"]["output_salt"]}}, "the opening has no input_salt"),
        (lambda b: {**b, "opening": {**b["opening"], "input_salt": "not hex"}}, "the opening's input_salt is not hex"),
        (lambda b: {k: v for k, v in b.items() if k != "opening"}, "the opening has no input_salt"),
        (
            lambda b: {**b, "payload": {**b["payload"], "prompt": "a guess"}},
            "the input does not match the receipt's commitment",
        ),
        (lambda b: {**b, "result": {"output": "a guess"}}, "the output does not match the receipt's commitment"),
    ],
)
def test_a_tampered_opening_or_other_contents_fail(answered, tmp_path, change, reason):
    bundle = change(bundle_of(answered))
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle))

    assert APIClient().post("/v1/receipts/verify", bundle, format="json").json() == {"valid": False, "reason": reason}
    assert verify.main([str(path)]) == 1
    with pytest.raises(SystemExit):
        call_command("verify_receipt", str(path), stdout=io.StringIO(), stderr=io.StringIO())


def test_only_the_jobs_client_is_given_the_opening(answered, client_api, other_client_api, miner_api):
    receipt_id = answered["result"]["receipt"]["receipt_id"]
    job_id = answered["job"]["job_id"]
    url = f"/v1/receipts/{receipt_id}/opening"

    mine = client_api.get(url)
    listed = client_api.get(f"/v1/jobs/{job_id}/receipts").json()

    assert mine.json() == {"receipt_id": receipt_id, **answered["result"]["receipt_opening"]}
    assert listed["openings"] == {receipt_id: answered["result"]["receipt_opening"]}
    assert other_client_api.get(url).status_code == 404
    assert miner_api.get(url).status_code == 404, "the miner's owner sees the receipt, not its opening"
    assert APIClient().get(url).status_code == 401
    assert other_client_api.get(f"/v1/jobs/{job_id}/receipts").status_code == 404


def test_the_client_pseudonym_is_stable_per_client_and_keyed_by_the_servers_secret(
    settings, client_api, other_client_api
):
    alice, bob = client_api.user, other_client_api.user
    pseudonym = client_pseudonym(alice.pk)

    assert pseudonym == client_pseudonym(alice.pk) != client_pseudonym(bob.pk)
    assert pseudonym.startswith("clt_") and len(pseudonym) == 36
    for plain in (alice.username, str(alice.pk)):
        assert hashlib.sha256(plain.encode()).hexdigest()[:32] not in pseudonym
    settings.SECRET_KEY = "another server's secret"
    assert client_pseudonym(alice.pk) != pseudonym


@pytest.fixture
def signed_before_commitments(answered, client_api):
    """A receipt as receipts were signed before commitments (the client's username, plain digests),
    for alice's job, sealed."""
    job = Job.objects.get(pk=answered["job"]["job_id"])
    document = {
        **answered["result"]["receipt"],
        "receipt_id": "rcpt_signed_before_commitments",
        "client": client_api.user.username,
        "metadata": {
            "model": job.model,
            "attempt": job.attempt,
            "input_sha256": hashlib.sha256(canonical(job.payload)).hexdigest(),
            "output_sha256": hashlib.sha256(canonical(job.result)).hexdigest(),
            "usage": job.usage,
        },
    }
    del document["signature"]
    _, signed = signing.signed_document(document, signing.coordinator_signing_key())
    Receipt.objects.create(receipt_id=document["receipt_id"], job=job, signed_json=signed.decode())
    services.blocks_seal_pending()
    return Receipt.objects.get(pk=document["receipt_id"])


def test_a_receipt_signed_before_commitments_is_public_without_its_username_and_digests(
    signed_before_commitments, client_api, answered
):
    receipt_id = signed_before_commitments.receipt_id
    leaf = BlockLeaf.objects.get(kind=LeafKind.RECEIPT, ref=receipt_id)
    shown = {item["receiptId"]: item["payload"] for item in APIClient().get("/v1/explorer/receipts").json()["items"]}
    sealed = APIClient().get(f"/v1/explorer/transactions/{leaf.leaf_hash}").json()["document"]

    for public in (shown[receipt_id], sealed):
        assert "client" not in public
        assert {"input_sha256", "output_sha256"}.isdisjoint(public["metadata"])
        assert public["withheld"] == ["client", "metadata.input_sha256", "metadata.output_sha256"]
    for body in public_pages(APIClient()).values():
        assert client_api.user.username not in body

    whole = client_api.get(f"/v1/receipts/{receipt_id}").json()
    assert whole["client"] == client_api.user.username
    assert verify.verify_receipt(whole, payload=answered["job"]["payload"], result=answered["result"]["result"]) == (
        True,
        None,
    )
    assert client_api.get(f"/v1/receipts/{receipt_id}/opening").json()["error_code"] == "RECEIPT_HAS_NO_OPENING"
    assert list(selectors.chain_problems()) == []
