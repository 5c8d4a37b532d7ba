import hashlib
import hmac
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import bech32
import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.urls import reverse
from django.utils import timezone
from embit import bip32, script
from embit.networks import NETWORKS
from rest_framework.test import APIClient

from accounts.services import user_get_or_create, user_session_create
from core.errors import Invalid
from payments import bitcoin
from payments.exchange import exchange_payment_confirm, exchange_payment_create, exchange_payments_expire_due
from payments.models import ExchangePayment, ExchangePaymentStatus, LedgerTransaction, TransactionKind, Wallet
from tests.admin_responses import messages_of

# BIP-84's published test vectors: the account m/84'/0'/0' of the mnemonic "abandon abandon … about",
# and its first two receiving addresses. The default testnet key is the same mnemonic's m/84'/1'/0'.
BIP84_ZPUB = (
    "zpub6rFR7y4Q2AijBEqTUquhVz398htDFrtymD9xYYfG1m4wAcvPhXNfE3EfH1r1ADqtfSdVCToUG868RvUUkgDKf31mGDtKsAYz2oz2AGutZYs"
)
BIP84_MAINNET_ADDRESSES = ["bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu", "bc1qnjg0jd8228aq7egyzacy8cys3knf9xvrerkf9g"]
TESTNET_FIRST_ADDRESS = "tb1q6rz28mcfaxtmd6v789l9rrlrusdprr9pqcpvkl"
SECRET = "whsec-test-exchange"
TXID = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"

CREATE = "/v1/exchange/create-payment"


def status_url(payment_id: str) -> str:
    return f"/v1/exchange/payment-status/{payment_id}"


def confirm_url(payment_id: str) -> str:
    return f"/v1/exchange/confirm-payment/{payment_id}"


@pytest.fixture(autouse=True)
def _exchange_settings(settings):
    settings.BTC_TO_AITBC_RATE = Decimal(100000)
    settings.EXCHANGE_NETWORK = "testnet"
    settings.EXCHANGE_PAYMENT_TTL_SECONDS = 3600
    settings.EXCHANGE_MIN_CONFIRMATIONS = 1
    settings.EXCHANGE_WEBHOOK_SECRET = SECRET


@pytest.fixture
def admin_api(make_api):
    return make_api("admin", "treasurer")


def buy(api, *, aitbc="1000", btc="0.01", user_id=None):
    body = {"user_id": api.user.pk if user_id is None else user_id, "aitbc_amount": aitbc, "btc_amount": btc}
    return api.post(CREATE, body, format="json")


def bought(api, **amounts) -> dict:
    response = buy(api, **amounts)
    assert response.status_code == 201, response.content
    return response.json()


def signed_post(payment_id: str, body: dict, *, secret: str = SECRET, api: APIClient | None = None):
    raw = json.dumps(body).encode()
    signature = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return (api or APIClient()).post(
        confirm_url(payment_id), raw, content_type="application/json", HTTP_X_EXCHANGE_SIGNATURE=signature
    )


def webhook_body(payment_id: str, **extra) -> dict:
    return {"payment_id": payment_id, "txid": TXID, "confirmations": 2, "amount_btc": "0.01", **extra}


def balance_of(user) -> Decimal:
    return Wallet.objects.get(user=user).balance


def exchange_mints() -> int:
    return LedgerTransaction.objects.filter(kind=TransactionKind.MINT, business_key__startswith="exchange:").count()


# --- Creating a payment request ------------------------------------------------------------


def test_a_payment_request_is_pending_with_its_own_testnet_address(client_api):
    payment = bought(client_api)

    assert payment["payment_id"].startswith("exch_")
    assert payment["user_id"] == client_api.user.pk
    assert (payment["aitbc_amount"], payment["btc_amount"], payment["rate"]) == (
        "1000.00000000",
        "0.01000000",
        "100000.00000000",
    )
    assert payment["status"] == "pending"
    assert payment["payment_address"] == TESTNET_FIRST_ADDRESS
    assert payment["payment_uri"] == f"bitcoin:{TESTNET_FIRST_ADDRESS}?amount=0.01000000"
    assert payment["derivation_path"] == "m/0/0"
    assert payment["tx_hash"] is None


def test_btc_amount_that_disagrees_with_the_rate_is_an_amount_mismatch(client_api):
    response = buy(client_api, aitbc="1000", btc="0.011")

    assert response.status_code == 400
    assert response.json() == {"detail": "Amount mismatch", "error_code": "AMOUNT_MISMATCH"}
    assert not ExchangePayment.objects.exists()


@pytest.mark.parametrize("btc, code", [("0.00001001", 201), ("0.00000999", 201), ("0.00001002", 400)])
def test_amounts_may_disagree_by_one_satoshi(client_api, btc, code):
    assert buy(client_api, aitbc="1", btc=btc).status_code == code


def test_amounts_sent_as_json_numbers_at_float_precision_are_accepted(client_api):
    # The AITBC CLI sends btc_amount = aitbc_amount / rate as a float.
    response = buy(client_api, aitbc=123.456, btc=123.456 / 100000)

    assert response.status_code == 201, response.content
    assert (response.json()["aitbc_amount"], response.json()["btc_amount"]) == ("123.45600000", "0.00123456")


@pytest.mark.parametrize("aitbc, btc", [("0", "0"), ("-1", "-0.00001"), ("abc", "0.01")])
def test_non_positive_or_non_numeric_amounts_are_invalid(client_api, aitbc, btc):
    response = buy(client_api, aitbc=aitbc, btc=btc)

    assert response.status_code == 422
    assert response.json()["error_code"] == "VALIDATION_ERROR"


def test_buying_for_someone_else_is_forbidden(client_api, other_client_api):
    response = buy(client_api, user_id=other_client_api.user.pk)

    assert response.status_code == 403
    assert response.json()["error_code"] == "FORBIDDEN"
    assert not ExchangePayment.objects.exists()


def test_an_admin_key_may_request_for_any_user(admin_api, client_api):
    payment = bought(admin_api, user_id=client_api.user.pk)

    assert ExchangePayment.objects.get(pk=payment["payment_id"]).user == client_api.user


def test_a_wallet_session_token_may_request(db):
    user = user_get_or_create(username="wallet-user")
    api = APIClient()
    api.credentials(HTTP_X_SESSION_TOKEN=user_session_create(user=user).raw_token)
    api.user = user

    assert buy(api).status_code == 201


def test_creating_needs_credentials(db):
    assert APIClient().post(CREATE, {"user_id": 1, "aitbc_amount": 1, "btc_amount": 0.00001}).status_code == 401


def test_successive_requests_get_successive_addresses(client_api):
    first, second = bought(client_api), bought(client_api)

    assert (first["derivation_path"], second["derivation_path"]) == ("m/0/0", "m/0/1")
    assert second["payment_address"] == bitcoin.deposit_address(1) != first["payment_address"]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_never_share_an_address(client_api):
    def buy_in_thread(_):
        api = APIClient()
        api.credentials(HTTP_X_API_KEY=client_api.raw_key)
        api.user = client_api.user
        try:
            response = buy(api)
            return response.status_code, response.json()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(buy_in_thread, range(16)))

    assert [code for code, _ in results] == [201] * 16
    addresses = {body["payment_address"] for _, body in results}
    assert len(addresses) == 16
    assert sorted(ExchangePayment.objects.values_list("derivation_index", flat=True)) == list(range(16))
    for payment in ExchangePayment.objects.all():
        assert payment.deposit_address == bitcoin.deposit_address(payment.derivation_index)


# --- Addresses ------------------------------------------------------------------------------


def test_testnet_addresses_are_valid_bech32_p2wpkh_matching_the_derivation(settings):
    account = bip32.HDKey.from_base58(settings.EXCHANGE_XPUB)
    for index in (0, 1, 7, 1000):
        address = bitcoin.deposit_address(index)
        version, program = bech32.decode("tb", address)  # an implementation independent of embit's
        assert (version, len(program)) == (0, 20)
        expected = script.p2wpkh(account.derive([0, index]).key).address(NETWORKS["test"])
        assert address == expected


def test_mainnet_addresses_match_the_published_bip84_vectors(settings):
    settings.EXCHANGE_NETWORK = "mainnet"
    settings.EXCHANGE_XPUB = BIP84_ZPUB

    assert [bitcoin.deposit_address(index) for index in (0, 1)] == BIP84_MAINNET_ADDRESSES


def test_a_key_for_another_network_is_refused(settings):
    settings.EXCHANGE_NETWORK = "mainnet"  # the default key is a testnet vpub

    with pytest.raises(ImproperlyConfigured, match="EXCHANGE_NETWORK=mainnet"):
        bitcoin.deposit_address(0)


def test_a_private_key_is_refused(settings):
    settings.EXCHANGE_XPUB = bip32.HDKey.from_seed(b"\x01" * 64, version=NETWORKS["test"]["xprv"]).to_base58()

    with pytest.raises(ImproperlyConfigured, match="private key"):
        bitcoin.deposit_address(0)


# --- Status and expiry ----------------------------------------------------------------------


def test_payment_status_is_pending_until_the_deadline_then_expired(client_api):
    payment = bought(client_api)
    assert client_api.get(status_url(payment["payment_id"])).json()["status"] == "pending"

    ExchangePayment.objects.filter(pk=payment["payment_id"]).update(expires_at=timezone.now() - timedelta(seconds=1))

    assert client_api.get(status_url(payment["payment_id"])).json()["status"] == "expired"
    # The read wrote nothing: the sweep stores the expiry.
    assert ExchangePayment.objects.get(pk=payment["payment_id"]).status == ExchangePaymentStatus.PENDING
    assert exchange_payments_expire_due() == 1


def test_the_expiry_sweep_expires_only_overdue_requests(client_api):
    an_hour_ago = timezone.now() - timedelta(hours=1, seconds=1)
    overdue = exchange_payment_create(user=client_api.user, aitbc_amount=1, btc_amount="0.00001", now=an_hour_ago)
    live = exchange_payment_create(user=client_api.user, aitbc_amount=1, btc_amount="0.00001")

    assert exchange_payments_expire_due() == 1

    overdue.refresh_from_db()
    live.refresh_from_db()
    assert (overdue.status, live.status) == (ExchangePaymentStatus.EXPIRED, ExchangePaymentStatus.PENDING)


def test_someone_elses_payment_status_is_not_found(client_api, other_client_api):
    payment = bought(client_api)

    response = other_client_api.get(status_url(payment["payment_id"]))

    assert response.status_code == 404
    assert response.json()["error_code"] == "EXCHANGE_PAYMENT_NOT_FOUND"


# --- Confirmation by webhook ------------------------------------------------------------------


def test_a_signed_webhook_confirms_and_mints_once(client_api):
    payment = bought(client_api)
    before = balance_of(client_api.user)

    first = signed_post(payment["payment_id"], webhook_body(payment["payment_id"]))
    again = signed_post(payment["payment_id"], webhook_body(payment["payment_id"]))

    assert first.status_code == again.status_code == 200
    assert (first.json()["minted"], again.json()["minted"]) == (True, False)
    assert first.json()["ledger_transaction_id"] == again.json()["ledger_transaction_id"]
    confirmed = first.json()["payment"]
    assert (confirmed["status"], confirmed["tx_hash"], confirmed["confirmations"]) == ("confirmed", TXID, 2)
    assert balance_of(client_api.user) == before + Decimal(1000)
    assert exchange_mints() == 1
    stored = ExchangePayment.objects.get(pk=payment["payment_id"])
    assert stored.confirmed_by is None
    assert LedgerTransaction.objects.get(business_key=f"exchange:{stored.pk}").actor is None


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_webhook_deliveries_mint_once(client_api):
    payment_id = bought(client_api)["payment_id"]
    before = balance_of(client_api.user)

    def deliver(_):
        try:
            response = signed_post(payment_id, webhook_body(payment_id))
            return response.status_code, response.json()["minted"]
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = sorted(pool.map(deliver, range(4)))

    assert results == [(200, False), (200, False), (200, False), (200, True)]
    assert balance_of(client_api.user) == before + Decimal(1000)
    assert exchange_mints() == 1


def test_a_bad_signature_is_unauthorized(client_api):
    payment_id = bought(client_api)["payment_id"]

    response = signed_post(payment_id, webhook_body(payment_id), secret="not-the-secret")

    assert response.status_code == 401
    assert response.json()["error_code"] == "INVALID_SIGNATURE"
    assert ExchangePayment.objects.get(pk=payment_id).status == ExchangePaymentStatus.PENDING
    assert exchange_mints() == 0


def test_a_body_changed_after_signing_is_unauthorized(client_api):
    payment_id = bought(client_api)["payment_id"]
    raw = json.dumps(webhook_body(payment_id)).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()

    response = APIClient().post(
        confirm_url(payment_id),
        raw.replace(b'"confirmations": 2', b'"confirmations": 6'),
        content_type="application/json",
        HTTP_X_EXCHANGE_SIGNATURE=signature,
    )

    assert response.status_code == 401


def test_webhooks_are_refused_while_no_secret_is_configured(client_api, settings):
    settings.EXCHANGE_WEBHOOK_SECRET = ""
    payment_id = bought(client_api)["payment_id"]

    response = signed_post(payment_id, webhook_body(payment_id), secret="")

    assert response.status_code == 403
    assert response.json()["error_code"] == "WEBHOOK_DISABLED"
    assert exchange_mints() == 0


def test_a_signed_body_confirms_only_the_payment_it_names(client_api):
    first, second = bought(client_api)["payment_id"], bought(client_api)["payment_id"]

    response = signed_post(second, webhook_body(first))

    assert response.status_code == 422
    assert ExchangePayment.objects.get(pk=second).status == ExchangePaymentStatus.PENDING


def test_an_underpaid_deposit_is_not_confirmed(client_api):
    payment_id = bought(client_api)["payment_id"]

    response = signed_post(payment_id, webhook_body(payment_id, amount_btc="0.00999999"))

    assert response.status_code == 409
    assert response.json()["error_code"] == "UNDERPAID"
    assert exchange_mints() == 0


def test_a_deposit_without_enough_confirmations_is_not_confirmed(client_api):
    payment_id = bought(client_api)["payment_id"]

    response = signed_post(payment_id, webhook_body(payment_id, confirmations=0))

    assert response.status_code == 409
    assert response.json()["error_code"] == "NOT_ENOUGH_CONFIRMATIONS"


@pytest.mark.parametrize(
    "omitted",
    [
        ("confirmations", "amount_btc"),
        ("confirmations",),
        ("amount_btc",),
        ("txid",),
        ("txid", "confirmations", "amount_btc"),
    ],
)
def test_a_webhook_missing_what_the_deposit_must_prove_is_refused_naming_it(client_api, omitted):
    payment_id = bought(client_api)["payment_id"]
    body = {name: value for name, value in webhook_body(payment_id).items() if name not in omitted}

    response = signed_post(payment_id, body)

    assert response.status_code == 422, response.content
    assert response.json()["error_code"] == "CONFIRMATION_INCOMPLETE"
    assert set(response.json()["errors"]) == set(omitted)
    assert all(name in response.json()["detail"] for name in omitted)
    assert ExchangePayment.objects.get(pk=payment_id).status == ExchangePaymentStatus.PENDING
    assert exchange_mints() == 0


def test_a_webhook_may_name_the_transaction_as_tx_hash(client_api):
    payment_id = bought(client_api)["payment_id"]
    body = {**webhook_body(payment_id), "tx_hash": TXID}
    del body["txid"]

    response = signed_post(payment_id, body)

    assert response.status_code == 200, response.content
    assert response.json()["payment"]["tx_hash"] == TXID


def test_a_repeated_webhook_missing_fields_is_refused_too(client_api):
    payment_id = bought(client_api)["payment_id"]
    assert signed_post(payment_id, webhook_body(payment_id)).status_code == 200

    response = signed_post(payment_id, {"payment_id": payment_id})

    assert response.status_code == 422
    assert set(response.json()["errors"]) == {"txid", "confirmations", "amount_btc"}
    assert exchange_mints() == 1


def test_the_service_refuses_a_confirmation_without_staff_or_evidence(client_api):
    payment_id = bought(client_api)["payment_id"]

    with pytest.raises(Invalid) as refused:
        exchange_payment_confirm(payment_id=payment_id, actor=None, txid=TXID)

    assert refused.value.code == "CONFIRMATION_INCOMPLETE"
    assert set(refused.value.errors) == {"confirmations", "amount_btc"}
    assert exchange_mints() == 0


# --- Confirmation by staff --------------------------------------------------------------------


def test_an_admin_key_confirms_and_is_recorded_as_the_actor(client_api, admin_api):
    payment_id = bought(client_api)["payment_id"]

    response = admin_api.post(confirm_url(payment_id), {"txid": TXID}, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["aitbc_amount"] == "1000.00000000"
    stored = ExchangePayment.objects.get(pk=payment_id)
    assert (stored.status, stored.confirmed_by, stored.txid) == (ExchangePaymentStatus.CONFIRMED, admin_api.user, TXID)
    assert LedgerTransaction.objects.get(business_key=f"exchange:{payment_id}").actor == admin_api.user


def test_a_client_key_cannot_confirm(client_api):
    payment_id = bought(client_api)["payment_id"]

    assert client_api.post(confirm_url(payment_id), {}, format="json").status_code == 403
    assert APIClient().post(confirm_url(payment_id), {}, format="json").status_code == 401
    assert exchange_mints() == 0


def test_an_expired_payment_cannot_be_confirmed(client_api, admin_api):
    payment_id = bought(client_api)["payment_id"]
    ExchangePayment.objects.filter(pk=payment_id).update(expires_at=timezone.now() - timedelta(seconds=1))

    by_admin = admin_api.post(confirm_url(payment_id), {}, format="json")
    by_webhook = signed_post(payment_id, webhook_body(payment_id))

    assert by_admin.status_code == by_webhook.status_code == 409
    assert by_admin.json()["error_code"] == by_webhook.json()["error_code"] == "PAYMENT_EXPIRED"
    assert ExchangePayment.objects.get(pk=payment_id).status == ExchangePaymentStatus.EXPIRED
    assert exchange_mints() == 0


def test_confirming_an_unknown_payment_is_not_found(admin_api):
    response = admin_api.post(confirm_url("exch_missing"), {}, format="json")

    assert response.status_code == 404
    assert response.json()["error_code"] == "EXCHANGE_PAYMENT_NOT_FOUND"


class TestAdminAction:
    def confirm(self, admin_client, payment_ids):
        return admin_client.post(
            reverse("admin:payments_exchangepayment_changelist"),
            {"action": "confirm", ACTION_CHECKBOX_NAME: payment_ids},
            follow=True,
        )

    def test_confirm_action_mints_and_records_the_staff_member(self, admin_client, admin_user, client_api):
        payment_id = bought(client_api)["payment_id"]
        before = balance_of(client_api.user)

        response = self.confirm(admin_client, [payment_id])

        assert "Confirmed 1 payment(s) and minted their credits." in messages_of(response)
        stored = ExchangePayment.objects.get(pk=payment_id)
        assert (stored.status, stored.confirmed_by) == (ExchangePaymentStatus.CONFIRMED, admin_user)
        assert LedgerTransaction.objects.get(business_key=f"exchange:{payment_id}").actor == admin_user
        assert balance_of(client_api.user) == before + Decimal(1000)

    def test_confirm_action_reports_expired_and_repeated_payments(self, admin_client, client_api):
        confirmed, expired = bought(client_api)["payment_id"], bought(client_api)["payment_id"]
        self.confirm(admin_client, [confirmed])
        ExchangePayment.objects.filter(pk=expired).update(expires_at=timezone.now() - timedelta(seconds=1))

        response = self.confirm(admin_client, [confirmed, expired])

        messages = messages_of(response)
        assert "1 payment(s) were already confirmed." in messages
        assert any(
            message.startswith(f"Not confirmed: {expired}: This payment request has expired") for message in messages
        )
        assert exchange_mints() == 1

    def test_changelist_filters_by_status(self, admin_client, client_api):
        bought(client_api)

        response = admin_client.get(
            reverse("admin:payments_exchangepayment_changelist"), {"status__exact": "confirmed"}
        )

        assert response.status_code == 200
        assert list(response.context["cl"].result_list) == []


# --- Public figures ----------------------------------------------------------------------------


def test_rates_are_public_numbers(db):
    response = APIClient().get("/v1/exchange/rates")

    assert response.status_code == 200
    assert response.json() == {
        "btc_to_aitbc": 100000.0,
        "aitbc_to_btc": 0.00001,
        "fee_percent": 0.0,
        "network": "testnet",
        "payment_ttl_seconds": 3600,
    }


def test_market_stats_are_public_totals(client_api, admin_api):
    confirmed = bought(client_api, aitbc="1000", btc="0.01")["payment_id"]
    bought(client_api, aitbc="500", btc="0.005")
    expired = bought(client_api, aitbc="1", btc="0.00001")["payment_id"]
    admin_api.post(confirm_url(confirmed), {}, format="json")
    ExchangePayment.objects.filter(pk=expired).update(expires_at=timezone.now() - timedelta(seconds=1))

    stats = APIClient().get("/v1/exchange/market-stats").json()

    assert {key: stats[key] for key in stats if key != "updated_at"} == {
        "price": "0.00001000",
        "price_change_24h": "0.00",
        "daily_volume": "1000.00000000",
        "daily_volume_btc": "0.01000000",
        "total_payments": 1,
        "pending_payments": 1,
        "expired_payments": 1,
        "total_requests": 3,
        "aitbc_minted": "1000.00000000",
        "btc_received": "0.01000000",
    }
