from decimal import Decimal

import pytest
from django.conf import settings

from payments.models import TransactionKind
from payments.selectors import wallet_of
from payments.services import treasury_mint

pytestmark = pytest.mark.django_db


def welcome() -> str:
    return f"{Decimal(settings.AITBC_WELCOME_CREDITS):.8f}"


def test_balance_of_myself(sign_in, wallet):
    api = sign_in(wallet)
    user_id = api.signed_in["user_id"]
    response = api.get(f"/v1/users/{user_id}/balance")
    assert response.status_code == 200
    assert response.json() == {"user_id": user_id, "wallet_address": wallet.address, "balance": welcome()}


def test_balance_of_another_user_is_403(sign_in, make_wallet):
    alice, bob = sign_in(make_wallet()), sign_in(make_wallet())
    response = alice.get(f"/v1/users/{bob.signed_in['user_id']}/balance")
    assert response.status_code == 403
    assert response.json()["error_code"] == "FORBIDDEN"
    assert alice.get(f"/v1/users/{bob.signed_in['user_id']}/transactions").status_code == 403


def test_balance_of_a_missing_user_is_403_for_a_client(sign_in, wallet):
    assert sign_in(wallet).get("/v1/users/999999/balance").status_code == 403


def test_admin_sees_any_users_balance(sign_in, wallet, make_api):
    user_id = sign_in(wallet).signed_in["user_id"]
    admin = make_api("admin", "root")
    response = admin.get(f"/v1/users/{user_id}/balance")
    assert response.status_code == 200
    assert response.json()["wallet_address"] == wallet.address
    missing = admin.get("/v1/users/999999/balance")
    assert missing.status_code == 404
    assert missing.json()["error_code"] == "USER_NOT_FOUND"


def test_client_api_key_user_has_an_account_with_a_wallet(client_api):
    response = client_api.get("/v1/users/me")
    assert response.status_code == 200
    body = response.json()
    assert body["username"] == "alice"
    assert body["balance"] == welcome()
    assert body["wallet_address"] == wallet_of(user=client_api.user).address
    assert client_api.get(f"/v1/users/{client_api.user.pk}/balance").json()["balance"] == welcome()


def test_miner_key_is_not_a_user_account(miner_api):
    assert miner_api.get("/v1/users/me").status_code == 403


def test_me_without_credentials_is_401(anonymous_api):
    response = anonymous_api.get("/v1/users/me")
    assert response.status_code == 401
    assert response.json()["error_code"] == "NOT_AUTHENTICATED"


def test_transactions_list_the_wallets_entries_newest_first(sign_in, wallet):
    api = sign_in(wallet)
    user_id = api.signed_in["user_id"]
    treasury_mint(wallet=wallet_of(user=user_id), amount="2.5", memo="top-up", business_key="mint:test")
    response = api.get(f"/v1/users/{user_id}/transactions")
    assert response.status_code == 200
    body = response.json()
    assert body["total"] == 2
    assert body["offset"] == 0
    latest, first = body["items"]
    assert latest["kind"] == TransactionKind.MINT
    assert latest["amount"] == "2.50000000"
    assert latest["memo"] == "top-up"
    assert latest["business_key"] == "mint:test"
    assert latest["job_id"] is None
    assert first["kind"] == TransactionKind.WELCOME
    assert first["amount"] == welcome()
    assert set(first) == {"transaction_id", "kind", "amount", "memo", "job_id", "created_at", "business_key"}
    assert api.get(f"/v1/users/{user_id}/balance").json()["balance"] == f"{Decimal(welcome()) + Decimal('2.5'):.8f}"


def test_transactions_are_paginated(sign_in, wallet):
    api = sign_in(wallet)
    user_id = api.signed_in["user_id"]
    for i in range(3):
        treasury_mint(wallet=wallet_of(user=user_id), amount="1", business_key=f"mint:{i}")
    page = api.get(f"/v1/users/{user_id}/transactions", {"limit": 2, "offset": 1}).json()
    assert page["total"] == 4
    assert (page["limit"], page["offset"]) == (2, 1)
    assert [item["business_key"] for item in page["items"]] == ["mint:1", "mint:0"]


def test_transactions_list_query_count_does_not_grow_with_entries(sign_in, wallet, django_assert_max_num_queries):
    api = sign_in(wallet)
    user_id = api.signed_in["user_id"]
    for i in range(20):
        treasury_mint(wallet=wallet_of(user=user_id), amount="1", business_key=f"mint:{i}")
    with django_assert_max_num_queries(5):
        response = api.get(f"/v1/users/{user_id}/transactions")
    assert response.json()["total"] == 21


# --- Wallets open with accounts; reads never open one -------------------------------------


def ledger_rows() -> tuple[int, int, int]:
    from payments.models import LedgerEntry, LedgerTransaction, Wallet

    return Wallet.objects.count(), LedgerTransaction.objects.count(), LedgerEntry.objects.count()


def test_creating_an_account_opens_its_wallet_with_the_welcome_credits():
    from accounts.services import user_create

    user = user_create(username="dora")

    assert f"{wallet_of(user=user).balance:.8f}" == welcome()
    assert wallet_of(user=user).entries.get().transaction.kind == TransactionKind.WELCOME


def test_reading_my_account_writes_nothing(client_api):
    client_api.get("/v1/users/me")  # the API key's first use is recorded once: leave that out
    before = ledger_rows()

    for path in (
        "/v1/users/me",
        f"/v1/users/{client_api.user.pk}/balance",
        f"/v1/users/{client_api.user.pk}/transactions",
    ):
        assert client_api.get(path).status_code == 200

    assert ledger_rows() == before


def test_an_account_without_a_wallet_reads_as_an_empty_balance_and_gets_none():
    from rest_framework.test import APIClient

    from accounts.models import User
    from accounts.services import api_key_create

    user = User.objects.create_user(username="made-elsewhere")  # as createsuperuser makes one
    api = APIClient()
    api.credentials(HTTP_X_API_KEY=api_key_create(user=user, scope="client").raw_key)
    api.get("/v1/users/me")  # the API key's first use is recorded once: leave that out
    before = ledger_rows()

    me = api.get("/v1/users/me").json()
    balance = api.get(f"/v1/users/{user.pk}/balance").json()
    transactions = api.get(f"/v1/users/{user.pk}/transactions").json()

    assert (me["wallet_address"], me["balance"]) == (None, "0.00000000")
    assert balance == {"user_id": user.pk, "wallet_address": None, "balance": "0.00000000"}
    assert transactions["items"] == []
    assert ledger_rows() == before
    assert wallet_of(user=user) is None
