from decimal import Decimal

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse

from accounts.services import user_get_or_create
from jobs.models import Job
from payments.models import LedgerTransaction, PaymentStatus, TransactionKind, WalletKind
from payments.services import system_wallet
from tests.admin_responses import messages_of
from tests.factories import WalletFactory

WALLETS = reverse("admin:payments_wallet_changelist")
TRANSACTIONS = reverse("admin:payments_ledgertransaction_changelist")
PAYMENTS = reverse("admin:payments_payment_changelist")


@pytest.fixture
def alice_wallet(db):
    return WalletFactory(user__username="alice")


def credit(admin_client, wallets, *, amount="25", reason="Support ticket 42", token="t" * 32):
    return admin_client.post(
        WALLETS,
        {
            "action": "credit",
            ACTION_CHECKBOX_NAME: [wallet.pk for wallet in wallets],
            "apply": "Credit",
            "amount": amount,
            "reason": reason,
            "token": token,
        },
        follow=True,
    )


def paid_job(api, submit_job, amount="3") -> Job:
    return Job.objects.get(pk=submit_job(api, payment_amount=amount)["job_id"])


# --- Changelists -----------------------------------------------------------------------


def test_wallet_changelist_finds_a_wallet_by_username(admin_client, alice_wallet):
    WalletFactory(user__username="bob")

    response = admin_client.get(WALLETS, {"q": "alice"})

    assert response.status_code == 200
    assert [wallet.address for wallet in response.context["cl"].result_list] == [alice_wallet.address]


def test_wallet_changelist_filters_by_kind(admin_client, alice_wallet):
    response = admin_client.get(WALLETS, {"kind__exact": WalletKind.TREASURY})

    assert {wallet.kind for wallet in response.context["cl"].result_list} == {WalletKind.TREASURY}


def test_ledger_transaction_page_shows_its_entries(admin_client, alice_wallet):
    welcome = LedgerTransaction.objects.get(kind=TransactionKind.WELCOME)

    response = admin_client.get(reverse("admin:payments_ledgertransaction_change", args=[welcome.pk]))

    assert response.status_code == 200
    assert alice_wallet.address in response.content.decode()


def test_ledger_transactions_filter_by_kind(admin_client, alice_wallet):
    response = admin_client.get(TRANSACTIONS, {"kind__exact": TransactionKind.WELCOME})

    assert [tx.business_key for tx in response.context["cl"].result_list] == [f"welcome:{alice_wallet.address}"]


def test_payment_changelist_filters_by_status(admin_client, client_api, submit_job):
    job = paid_job(client_api, submit_job)

    escrowed = admin_client.get(PAYMENTS, {"status__exact": PaymentStatus.ESCROWED})
    refunded = admin_client.get(PAYMENTS, {"status__exact": PaymentStatus.REFUNDED})

    assert [p.payment_id for p in escrowed.context["cl"].result_list] == [job.payment_id]
    assert list(refunded.context["cl"].result_list) == []


# --- Nothing is edited or deleted ------------------------------------------------------


@pytest.mark.parametrize("model", ["wallet", "ledgertransaction"])
def test_the_change_form_refuses_edits(admin_client, alice_wallet, model):
    obj = alice_wallet if model == "wallet" else LedgerTransaction.objects.get()
    url = reverse(f"admin:payments_{model}_change", args=[obj.pk])

    response = admin_client.post(url, {"balance": "1000000", "memo": "edited"})

    assert response.status_code == 403
    alice_wallet.refresh_from_db()
    assert alice_wallet.balance == Decimal(100)
    assert LedgerTransaction.objects.get().memo == "Welcome credits"


@pytest.mark.parametrize("model", ["wallet", "ledgertransaction", "payment"])
def test_ledger_rows_cannot_be_added_or_deleted(admin_client, alice_wallet, model):
    obj = {"wallet": alice_wallet, "ledgertransaction": LedgerTransaction.objects.get()}.get(model)

    assert admin_client.get(reverse(f"admin:payments_{model}_add")).status_code == 403
    if obj is not None:
        assert admin_client.post(reverse(f"admin:payments_{model}_delete", args=[obj.pk])).status_code == 403


# --- Credit… ---------------------------------------------------------------------------


def test_credit_action_first_asks_for_amount_and_reason(admin_client, alice_wallet):
    response = admin_client.post(WALLETS, {"action": "credit", ACTION_CHECKBOX_NAME: [alice_wallet.pk]})

    assert response.status_code == 200
    page = response.content.decode()
    assert 'name="amount"' in page and 'name="reason"' in page
    assert alice_wallet.address in page
    assert LedgerTransaction.objects.filter(kind=TransactionKind.MINT).count() == 0


def test_credit_mints_into_the_wallet_with_the_staff_member_on_record(admin_client, admin_user, alice_wallet):
    response = credit(admin_client, [alice_wallet], amount="25", reason="Support ticket 42")

    assert "Credited 25 AITBC to 1 wallet(s)." in messages_of(response)
    alice_wallet.refresh_from_db()
    assert alice_wallet.balance == Decimal(125)
    mint = LedgerTransaction.objects.get(kind=TransactionKind.MINT)
    assert (mint.actor, mint.memo) == (admin_user, "Support ticket 42")
    assert mint.created_at is not None
    assert {(e.wallet_id, e.amount) for e in mint.entries.all()} == {
        (alice_wallet.pk, Decimal(25)),
        (system_wallet(WalletKind.TREASURY).pk, Decimal(-25)),
    }


def test_submitting_the_same_credit_form_twice_credits_once(admin_client, alice_wallet):
    credit(admin_client, [alice_wallet], token="a" * 32)
    credit(admin_client, [alice_wallet], token="a" * 32)

    alice_wallet.refresh_from_db()
    assert alice_wallet.balance == Decimal(125)


def test_credit_skips_system_wallets(admin_client, alice_wallet):
    treasury = system_wallet(WalletKind.TREASURY)
    before = treasury.balance

    response = credit(admin_client, [alice_wallet, treasury])

    assert "1 system or escrow wallet(s) skipped." in messages_of(response)
    treasury.refresh_from_db()
    assert treasury.balance == before - 25


@pytest.mark.parametrize("amount", ["0", "-5", "abc", "0.000000001"])
def test_credit_with_a_bad_amount_shows_the_form_again(admin_client, alice_wallet, amount):
    response = credit(admin_client, [alice_wallet], amount=amount)

    assert response.status_code == 200
    assert response.context["form"].errors["amount"]
    assert not LedgerTransaction.objects.filter(kind=TransactionKind.MINT).exists()


def test_staff_who_may_only_view_the_ledger_cannot_mint(client, alice_wallet):
    from django.contrib.auth.models import Permission

    viewer = user_get_or_create(username="viewer")
    viewer.is_staff = True
    viewer.set_password("pw")
    viewer.save()
    viewer.user_permissions.add(*Permission.objects.filter(codename__in=["view_wallet", "view_ledgertransaction"]))
    client.force_login(viewer)
    page = client.get(WALLETS)
    assert page.status_code == 200
    assert b'value="credit"' not in page.content
    credit(client, [alice_wallet])
    assert not LedgerTransaction.objects.filter(kind=TransactionKind.MINT).exists()
