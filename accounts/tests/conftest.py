from dataclasses import dataclass

import pytest
from nacl.signing import SigningKey
from rest_framework.test import APIClient

from core.crypto.addresses import wallet_address


@dataclass
class SigningWallet:
    key: SigningKey

    @property
    def public_key(self) -> str:
        return self.key.verify_key.encode().hex()

    @property
    def address(self) -> str:
        return wallet_address(self.key.verify_key.encode())

    def sign(self, message: str) -> str:
        return self.key.sign(message.encode()).signature.hex()


@pytest.fixture
def make_wallet():
    return lambda: SigningWallet(SigningKey.generate())


@pytest.fixture
def wallet(make_wallet):
    return make_wallet()


@pytest.fixture
def anonymous_api():
    return APIClient()


def ask_nonce(api: APIClient, address: str) -> dict:
    response = api.post("/v1/auth/nonce", {"wallet_address": address}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def login_body(wallet: SigningWallet, challenge: dict) -> dict:
    return {
        "wallet_address": wallet.address,
        "public_key": wallet.public_key,
        "signature": wallet.sign(challenge["message"]),
    }


@pytest.fixture
def sign_in(db, anonymous_api):
    """``sign_in(wallet)`` → an APIClient sending the new session as ``X-Session-Token``, with
    ``.signed_in`` (the login response) set."""

    def sign(wallet: SigningWallet) -> APIClient:
        challenge = ask_nonce(anonymous_api, wallet.address)
        response = anonymous_api.post("/v1/users/login", login_body(wallet, challenge), format="json")
        assert response.status_code == 200, response.content
        api = APIClient()
        api.credentials(HTTP_X_SESSION_TOKEN=response.json()["session_token"])
        api.signed_in = response.json()
        return api

    return sign
