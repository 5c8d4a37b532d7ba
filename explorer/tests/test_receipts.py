import base64
import json

import pytest
from nacl.signing import SigningKey, VerifyKey

from core.crypto import signing
from explorer.tests.independent import canonical as independent_canonical
from explorer.tests.independent import unpadded_b64decode
from jobs.receipts import client_pseudonym

PAYLOAD = {
    "version": "1.0",
    "receipt_id": "rcpt_1",
    "job_id": "j",
    "provider": "miner-1",
    "client": "alice",
    "status": "completed",
    "units": 12,
    "unit_type": "tokens",
    "price": None,
    "started_at": 1,
    "completed_at": 2,
    "metadata": {"model": "m", "usage": {"total_tokens": 12}, "note": "héllo"},
}


def test_signature_verifies_with_an_independent_implementation():
    key = SigningKey.generate()
    document = signing.sign(PAYLOAD, key)
    assert "price" not in document
    body = {k: v for k, v in document.items() if k not in ("signature", "attestations")}
    VerifyKey(unpadded_b64decode(document["signature"]["key_id"])).verify(
        independent_canonical(body), unpadded_b64decode(document["signature"]["sig"])
    )
    assert "=" not in document["signature"]["sig"]


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: d.update(units=13),
        lambda d: d["metadata"].update(model="other"),
        lambda d: d["signature"].update(
            sig=d["signature"]["sig"][:-2] + ("AA" if d["signature"]["sig"][-2:] != "AA" else "BB")
        ),
        lambda d: d["signature"].update(alg="RSA"),
        lambda d: d.pop("signature"),
    ],
)
def test_any_change_breaks_the_signature(tamper):
    document = json.loads(json.dumps(signing.sign(PAYLOAD, SigningKey.generate())))
    tamper(document)
    valid, reason = signing.verify(document)
    assert not valid
    assert reason


def test_verify_can_require_a_known_key():
    document = signing.sign(PAYLOAD, SigningKey.generate())
    assert signing.verify(document, trusted_key_ids={"someone-else"}) == (False, "signed by an unknown key")


def test_key_is_generated_once_and_kept_under_the_data_dir(settings, tmp_path, monkeypatch):
    settings.DATA_DIR = tmp_path
    settings.RECEIPT_SIGNING_KEY_HEX = ""
    monkeypatch.setattr(signing, "_signing_key", None)
    first = signing.coordinator_signing_key()
    monkeypatch.setattr(signing, "_signing_key", None)
    assert bytes(signing.coordinator_signing_key()) == bytes(first)
    assert (tmp_path / "receipt_signing_key.hex").stat().st_mode & 0o777 == 0o600


def test_key_from_the_environment_setting(settings, monkeypatch):
    seed = SigningKey.generate()
    settings.RECEIPT_SIGNING_KEY_HEX = bytes(seed).hex()
    monkeypatch.setattr(signing, "_signing_key", None)
    assert bytes(signing.coordinator_signing_key().verify_key) == bytes(seed.verify_key)
    monkeypatch.setattr(signing, "_signing_key", None)


@pytest.mark.django_db
def test_completed_job_receipt_binds_request_result_and_usage(client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api)
    job = submit_job(client_api, prompt="bind me")
    miner_api.post("/v1/miners/poll", {}, format="json")
    receipt = miner_api.post(
        f"/v1/miners/{job['job_id']}/result",
        {"result": {"output": "bound"}, "metrics": {"duration_ms": 50, "prompt_tokens": 3, "completion_tokens": 4}},
        format="json",
    ).json()["receipt"]
    stored_job = client_api.get(f"/v1/jobs/{job['job_id']}").json()
    opening = client_api.get(f"/v1/jobs/{job['job_id']}/result").json()["receipt_opening"]
    assert receipt["job_id"] == job["job_id"]
    assert receipt["provider"] == "miner-1"
    assert receipt["client"] == client_pseudonym(client_api.user.pk)
    assert receipt["units"] == 7
    assert receipt["metadata"]["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "total_tokens": 7,
        "compute_ms": 50,
    }
    assert receipt["metadata"]["commitment"] == "hmac-sha256"
    assert receipt["metadata"]["input_sha256"] == commitment(opening["input_salt"], stored_job["payload"])
    assert receipt["metadata"]["output_sha256"] == commitment(opening["output_salt"], {"output": "bound"})
    assert signing.verify(receipt) == (True, None)


@pytest.mark.django_db
def test_output_commitment_is_to_the_result_as_stored_even_where_the_database_rewrites_numbers(
    client_api, miner_api, register_miner, submit_job
):
    # jsonb reads 1e+16 back as the integer 10000000000000000, and -0.0 as 0.0.
    register_miner(miner_api)
    job = submit_job(client_api)
    miner_api.post("/v1/miners/poll", {}, format="json")
    sent = {"output": "x", "scores": [1e16, -0.0, 1.5e-07, 0.1], "big": -1.5e300}
    receipt = miner_api.post(f"/v1/miners/{job['job_id']}/result", {"result": sent}, format="json").json()["receipt"]

    answer = client_api.get(f"/v1/jobs/{job['job_id']}/result").json()
    stored = answer["result"]
    assert receipt["metadata"]["output_sha256"] == commitment(answer["receipt_opening"]["output_salt"], stored)
    assert stored["scores"] == [10**16, 0.0, 1.5e-07, 0.1]
    assert stored["big"] == -15 * 10**299


def commitment(salt: str, value) -> str:
    """HMAC-SHA256 of the independent canonical JSON of ``value`` under ``salt`` (hex)."""
    import hashlib
    import hmac

    return hmac.new(bytes.fromhex(salt), independent_canonical(value), hashlib.sha256).hexdigest()


def test_canonical_json_escapes_non_ascii_as_api_md_specifies():
    assert signing.canonical_json({"b": None, "a": "é"}) == b'{"a":"\\u00e9"}'


@pytest.mark.django_db
def test_receipt_carries_the_charged_price_and_unit_price_as_decimal_strings(make_receipts):
    from decimal import Decimal

    from explorer.tests.conftest import completed_jobs
    from jobs.receipts import receipts_issue

    job = completed_jobs(1)[0]
    job.price, job.unit_price = Decimal("2.00000000"), Decimal("0.00012")
    document = receipts_issue(completed=[(job, "miner-1", Decimal("1.50000000"))])[0].document
    assert document["price"] == "1.5"
    assert document["unit_price"] == "0.00012"
    assert signing.verify(document) == (True, None)


@pytest.mark.django_db
def test_receipt_carries_the_price_given_and_omits_an_absent_one(make_receipts):
    from decimal import Decimal

    from explorer.tests.conftest import completed_jobs
    from jobs.receipts import receipts_issue

    held, plain = completed_jobs(2)
    documents = [
        r.document for r in receipts_issue(completed=[(held, "miner-1", Decimal("3")), (plain, "miner-1", None)])
    ]
    assert documents[0]["price"] == "3"
    assert "unit_price" not in documents[0]
    assert "price" not in documents[1]


def test_offline_verifier_accepts_a_signed_receipt_and_names_its_key():
    from explorer import verify

    key = SigningKey.generate()
    document = json.loads(json.dumps(signing.sign(PAYLOAD, key)))
    assert verify.verify_receipt(document) == (True, None)
    assert verify.verify_receipt(document, bytes(key.verify_key).hex()) == (True, None)
    assert verify.verify_receipt(document, document["signature"]["key_id"]) == (True, None)
    other = bytes(SigningKey.generate().verify_key).hex()
    assert verify.verify_receipt(document, other) == (False, "signed by an unknown key")


def test_offline_verifier_agrees_with_an_independent_canonical_rule():
    from explorer import verify

    document = signing.sign(PAYLOAD, SigningKey.generate())
    assert verify.canonical(document) == independent_canonical(document)
    assert verify.signed_bytes(document) == independent_canonical(
        {k: v for k, v in document.items() if k not in ("signature", "attestations")}
    )


def test_offline_verifier_rejects_any_single_changed_byte():
    from explorer import verify

    text = signing.canonical_json(signing.sign(PAYLOAD, SigningKey.generate()))
    still_json = 0
    for index in range(len(text)):
        changed = bytearray(text)
        changed[index] = ord("1") if changed[index] != ord("1") else ord("2")
        try:
            document = json.loads(bytes(changed))
        except ValueError:
            continue  # no longer JSON: nothing a verifier could accept
        still_json += 1
        assert verify.verify_receipt(document)[0] is False, f"byte {index} changed, still valid"
    assert still_json > len(text) // 2


def test_attestations_are_checked_against_their_own_keys():
    from explorer import verify

    document = signing.sign(PAYLOAD, SigningKey.generate())
    miner_key = SigningKey.generate()
    sig = miner_key.sign(independent_canonical({k: v for k, v in document.items() if k != "signature"})).signature
    attestation = {"alg": "Ed25519", "key_id": signing.b64url(bytes(miner_key.verify_key)), "sig": signing.b64url(sig)}
    assert verify.verify_receipt({**document, "attestations": [attestation]}) == (True, None)
    forged = {**attestation, "key_id": signing.b64url(bytes(SigningKey.generate().verify_key))}
    assert verify.verify_receipt({**document, "attestations": [forged]}) == (
        False,
        "attestation 0: signature does not match",
    )


@pytest.mark.parametrize(
    "text",
    [
        "00" * 32,
        base64.urlsafe_b64encode(b"\x01" * 32).decode(),
        base64.urlsafe_b64encode(b"\x01" * 32).decode().rstrip("="),
        base64.b64encode(b"\xfb" * 32).decode(),
    ],
)
def test_public_keys_are_read_as_hex_or_base64(text):
    from explorer import verify

    assert len(verify.decode_public_key(text)) == 32


@pytest.mark.parametrize("text", ["", "00" * 31, "not a key!", base64.b64encode(b"\x01" * 31).decode()])
def test_malformed_public_keys_are_refused(text):
    from explorer import verify

    with pytest.raises(ValueError):
        verify.decode_public_key(text)


def test_a_signature_spelled_another_way_is_refused():
    from explorer import verify

    document = signing.sign(PAYLOAD, SigningKey.generate())
    padded = {**document, "signature": {**document["signature"], "sig": document["signature"]["sig"] + "=="}}
    assert verify.verify_receipt(padded) == (False, "malformed signature")
    assert signing.verify(padded) == (False, "malformed signature")
    standard = base64.b64encode(unpadded_b64decode(document["signature"]["sig"])).decode()
    respelled = {**document, "signature": {**document["signature"], "sig": standard}}
    assert verify.verify_receipt(respelled)[0] is False
