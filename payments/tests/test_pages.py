from decimal import Decimal

from payments.models import ExchangePayment, ExchangePaymentStatus
from payments.selectors import wallet_of
from payments.templatetags.credits import credits


def test_wallet_shows_balance_address_and_entries(browser, alice, finished_job):
    finished_job(alice)
    wallet = wallet_of(user=alice)
    response = browser.get("/wallet/")
    content = response.content.decode()
    assert wallet.address in content
    assert f"{credits(wallet.balance)} AITBC" in content
    kinds = [entry.transaction.kind for entry in response.context["entries"].object_list]
    assert kinds == ["escrow", "welcome"], "newest first; a fixed payment_amount is paid in full, no refund"


def test_top_up_form_creates_an_exchange_request_at_the_configured_rate(browser, alice, settings):
    settings.BTC_TO_AITBC_RATE = Decimal(100000)
    response = browser.post("/wallet/", {"aitbc_amount": "50"}, follow=True)
    payment = ExchangePayment.objects.get(user=alice)
    assert (payment.aitbc_amount, payment.btc_amount) == (Decimal(50), Decimal("0.0005"))
    assert payment.status == ExchangePaymentStatus.PENDING
    assert payment.deposit_address in response.content.decode()
    assert list(response.context["top_ups"]) == [payment]


def test_top_up_refuses_a_non_positive_amount(browser):
    response = browser.post("/wallet/", {"aitbc_amount": "0"})
    assert response.context["form"].errors["aitbc_amount"]
    assert not ExchangePayment.objects.exists()


def test_wallet_reads_a_fixed_number_of_queries(browser, alice, finished_job, django_assert_max_num_queries):
    for _ in range(5):
        finished_job(alice)
        browser.post("/wallet/", {"aitbc_amount": "1"})
    with django_assert_max_num_queries(9):
        response = browser.get("/wallet/")
    assert len(response.context["entries"].object_list) == 6


def test_pages_with_a_balance_write_nothing(browser, alice):
    from payments.models import LedgerTransaction, Wallet

    before = (Wallet.objects.count(), LedgerTransaction.objects.count())
    for page in ("/", "/wallet/"):
        assert browser.get(page).status_code == 200
    assert (Wallet.objects.count(), LedgerTransaction.objects.count()) == before


def test_an_account_without_a_wallet_sees_an_empty_balance_and_gets_none(db, client):
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(username="made-elsewhere")  # as createsuperuser makes one
    client.force_login(user)

    overview, wallet = client.get("/"), client.get("/wallet/")

    assert "0 AITBC" in overview.content.decode()
    assert "0 AITBC" in wallet.content.decode()
    assert wallet_of(user=user) is None
