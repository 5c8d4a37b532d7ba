from datetime import timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.utils import timezone

from accounts.models import User, UserSession, WalletNonce
from accounts.services import user_create
from accounts.tests.conftest import ask_nonce, login_body
from payments.models import Wallet

pytestmark = pytest.mark.django_db


def login(api, body, path="/v1/users/login"):
    return api.post(path, body, format="json")


def test_nonce_message_names_the_service_address_nonce_and_expiry(anonymous_api, wallet):
    challenge = ask_nonce(anonymous_api, wallet.address)
    assert challenge["wallet_address"] == wallet.address
    message = challenge["message"]
    assert message.startswith("Sign in to AITBC Coordinator\n")
    assert f"Address: {wallet.address}\n" in message
    assert f"Nonce: {challenge['nonce']}\n" in message
    assert "Domain: testserver\n" in message
    expires_at = WalletNonce.objects.get(nonce=challenge["nonce"]).expires_at
    assert f"Expires: {expires_at.isoformat()}" in message
    assert expires_at - timezone.now() <= timedelta(seconds=settings.WALLET_NONCE_TTL_SECONDS)


def test_nonces_are_random(anonymous_api, wallet):
    nonces = {ask_nonce(anonymous_api, wallet.address)["nonce"] for _ in range(3)}
    assert len(nonces) == 3


def test_sign_in_round_trip_shows_the_wallet_and_welcome_credits(anonymous_api, wallet):
    challenge = ask_nonce(anonymous_api, wallet.address)
    response = login(anonymous_api, login_body(wallet, challenge))
    assert response.status_code == 200, response.content
    signed_in = response.json()
    welcome = f"{Decimal(settings.AITBC_WELCOME_CREDITS):.8f}"
    assert signed_in["wallet_address"] == wallet.address
    assert signed_in["balance"] == welcome
    assert signed_in["session_token"]

    anonymous_api.credentials(HTTP_X_SESSION_TOKEN=signed_in["session_token"])
    me = anonymous_api.get("/v1/users/me")
    assert me.status_code == 200, me.content
    assert me.json() == {
        "user_id": signed_in["user_id"],
        "username": wallet.address,
        "wallet_address": wallet.address,
        "balance": welcome,
        "created_at": me.json()["created_at"],
    }
    assert Wallet.objects.get(address=wallet.address).public_key == wallet.public_key


def test_login_alias_signs_in_too(anonymous_api, wallet):
    response = login(anonymous_api, login_body(wallet, ask_nonce(anonymous_api, wallet.address)), path="/v1/login")
    assert response.status_code == 200, response.content


def test_second_sign_in_reaches_the_same_account(sign_in, wallet):
    first, second = sign_in(wallet), sign_in(wallet)
    assert first.signed_in["user_id"] == second.signed_in["user_id"]
    assert first.signed_in["session_token"] != second.signed_in["session_token"]
    assert User.objects.filter(username=wallet.address).count() == 1


def test_sign_in_reaches_the_user_whose_wallet_has_the_address(anonymous_api, wallet):
    existing = user_create(username="carol", public_key=bytes.fromhex(wallet.public_key))
    response = login(anonymous_api, login_body(wallet, ask_nonce(anonymous_api, wallet.address)))
    assert response.status_code == 200, response.content
    assert response.json()["user_id"] == existing.pk


def test_replayed_nonce_is_401(anonymous_api, wallet):
    body = login_body(wallet, ask_nonce(anonymous_api, wallet.address))
    assert login(anonymous_api, body).status_code == 200
    replay = login(anonymous_api, body)
    assert replay.status_code == 401
    assert replay.json()["error_code"] == "NONCE_USED"
    assert UserSession.objects.count() == 1


def test_signature_by_another_key_is_401(anonymous_api, wallet, make_wallet):
    challenge = ask_nonce(anonymous_api, wallet.address)
    forged = {**login_body(wallet, challenge), "signature": make_wallet().sign(challenge["message"])}
    response = login(anonymous_api, forged)
    assert response.status_code == 401
    assert response.json()["error_code"] == "INVALID_SIGNATURE"
    assert WalletNonce.objects.get(nonce=challenge["nonce"]).used_at is None


def test_signature_over_another_text_is_401(anonymous_api, wallet):
    ask_nonce(anonymous_api, wallet.address)
    body = login_body(wallet, {"message": "Sign in to AITBC Coordinator"})
    response = login(anonymous_api, body)
    assert response.status_code == 401
    assert response.json()["error_code"] == "INVALID_SIGNATURE"


def test_key_that_does_not_derive_the_address_is_401(anonymous_api, wallet, make_wallet):
    intruder = make_wallet()
    challenge = ask_nonce(anonymous_api, wallet.address)
    body = {
        "wallet_address": wallet.address,
        "public_key": intruder.public_key,
        "signature": intruder.sign(challenge["message"]),
    }
    response = login(anonymous_api, body)
    assert response.status_code == 401
    assert response.json()["error_code"] == "ADDRESS_MISMATCH"
    assert not User.objects.filter(username=wallet.address).exists()


def test_expired_nonce_is_401(anonymous_api, wallet):
    challenge = ask_nonce(anonymous_api, wallet.address)
    WalletNonce.objects.filter(nonce=challenge["nonce"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = login(anonymous_api, login_body(wallet, challenge))
    assert response.status_code == 401
    assert response.json()["error_code"] == "NONCE_EXPIRED"


def test_sign_in_without_any_nonce_is_401(anonymous_api, wallet):
    response = login(anonymous_api, login_body(wallet, {"message": "anything"}))
    assert response.status_code == 401
    assert response.json()["error_code"] == "NONCE_NOT_FOUND"


def test_an_older_outstanding_nonce_still_signs_in(anonymous_api, wallet):
    older = ask_nonce(anonymous_api, wallet.address)
    ask_nonce(anonymous_api, wallet.address)
    assert login(anonymous_api, login_body(wallet, older)).status_code == 200
    assert WalletNonce.objects.get(nonce=older["nonce"]).used_at is not None


def test_naming_the_nonce_checks_only_that_one(anonymous_api, wallet):
    signed = ask_nonce(anonymous_api, wallet.address)
    other = ask_nonce(anonymous_api, wallet.address)
    response = login(anonymous_api, {**login_body(wallet, signed), "nonce": other["nonce"]})
    assert response.status_code == 401
    assert response.json()["error_code"] == "INVALID_SIGNATURE"
    assert login(anonymous_api, {**login_body(wallet, signed), "nonce": signed["nonce"]}).status_code == 200


def test_disabled_account_cannot_sign_in(anonymous_api, wallet, sign_in):
    user_id = sign_in(wallet).signed_in["user_id"]
    User.objects.filter(pk=user_id).update(is_active=False)
    response = login(anonymous_api, login_body(wallet, ask_nonce(anonymous_api, wallet.address)))
    assert response.status_code == 403
    assert response.json()["error_code"] == "ACCOUNT_DISABLED"


@pytest.mark.parametrize(
    "field, value",
    [
        ("public_key", "zz" * 32),
        ("public_key", "ab" * 31),
        ("signature", "not hex at all"),
        ("signature", "ab" * 65),
        ("wallet_address", "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"),
        ("wallet_address", "ait1notanaddress"),
        ("wallet_address", ""),
    ],
)
def test_malformed_login_is_422(anonymous_api, wallet, field, value):
    body = login_body(wallet, ask_nonce(anonymous_api, wallet.address))
    response = login(anonymous_api, {**body, field: value})
    assert response.status_code == 422, response.content
    assert field in response.json()["errors"]


def test_missing_login_fields_are_422(anonymous_api):
    response = login(anonymous_api, {})
    assert response.status_code == 422
    assert set(response.json()["errors"]) == {"wallet_address", "public_key", "signature"}


@pytest.mark.parametrize("address", ["ait1notanaddress", "", 42])
def test_nonce_for_a_malformed_address_is_422(anonymous_api, address):
    response = anonymous_api.post("/v1/auth/nonce", {"wallet_address": address}, format="json")
    assert response.status_code == 422
    assert response.json()["error_code"] == "VALIDATION_ERROR"
    assert not WalletNonce.objects.exists()


def test_uppercase_address_is_the_same_address(anonymous_api, wallet):
    challenge = ask_nonce(anonymous_api, wallet.address.upper())
    assert challenge["wallet_address"] == wallet.address
    response = login(anonymous_api, {**login_body(wallet, challenge), "wallet_address": wallet.address.upper()})
    assert response.status_code == 200, response.content


def test_sign_in_endpoints_ignore_a_bad_api_key(anonymous_api, wallet):
    anonymous_api.credentials(HTTP_X_API_KEY="aitbc_wrong")
    body = login_body(wallet, ask_nonce(anonymous_api, wallet.address))
    assert login(anonymous_api, body).status_code == 200
