"""Credits above ADMIN_CREDIT_APPROVAL_THRESHOLD wait for a second staff member; every credit is audited."""

from decimal import Decimal

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.test import Client
from django.urls import reverse

from core.models import StaffAction
from payments.models import LedgerTransaction, PendingCredit, PendingCreditStatus, TransactionKind
from tests.admin_responses import messages_of
from tests.factories import WalletFactory

WALLETS = reverse("admin:payments_wallet_changelist")
PENDING = reverse("admin:payments_pendingcredit_changelist")


@pytest.fixture(autouse=True)
def threshold(settings):
    settings.ADMIN_CREDIT_APPROVAL_THRESHOLD = Decimal(100)


@pytest.fixture
def wallets(db):
    return [WalletFactory(user__username="alice"), WalletFactory(user__username="bob")]


@pytest.fixture
def second_staff(django_user_model) -> Client:
    browser = Client()
    browser.force_login(django_user_model.objects.create_superuser("approver", "approver@example.com", "pw"))
    return browser


def credit(browser, wallets, amount):
    return browser.post(
        WALLETS,
        {
            "action": "credit",
            ACTION_CHECKBOX_NAME: [wallet.pk for wallet in wallets],
            "apply": "Credit",
            "amount": amount,
            "reason": "Outage compensation",
            "token": "c" * 32,
        },
        follow=True,
    )


def approve(browser, pending, reason="Checked the outage report"):
    return browser.post(
        PENDING,
        {"action": "approve", ACTION_CHECKBOX_NAME: [p.pk for p in pending], "apply": "1", "reason": reason},
        follow=True,
    )


def mints() -> int:
    return LedgerTransaction.objects.filter(kind=TransactionKind.MINT).count()


def test_a_credit_within_the_threshold_is_minted_at_once_and_audited(admin_client, admin_user, wallets):
    response = credit(admin_client, wallets, "50")

    assert "Credited 50 AITBC to 2 wallet(s)." in messages_of(response)
    assert mints() == 2
    record = StaffAction.objects.get()
    assert (record.action, record.amount, record.reason) == ("credit wallets", Decimal(100), "Outage compensation")


def test_a_credit_above_the_threshold_waits_for_approval(admin_client, wallets):
    response = credit(admin_client, wallets, "60")

    assert any("wait for another staff member's approval" in m for m in messages_of(response))
    assert mints() == 0
    assert PendingCredit.objects.filter(status=PendingCreditStatus.PENDING).count() == 2
    assert StaffAction.objects.get().amount == Decimal(120)


def test_the_requester_cannot_approve_their_own_credit(admin_client, wallets):
    credit(admin_client, wallets[:1], "500")

    response = approve(admin_client, PendingCredit.objects.all())

    assert "0 credit(s) minted (0 AITBC)." in messages_of(response)
    assert any("A second staff member must decide" in m for m in messages_of(response))
    assert mints() == 0


def test_a_second_staff_member_approves_and_the_credit_is_minted_once(admin_client, second_staff, wallets):
    credit(admin_client, wallets[:1], "500")
    pending = list(PendingCredit.objects.all())

    page = second_staff.post(PENDING, {"action": "approve", ACTION_CHECKBOX_NAME: [pending[0].pk]})
    assert "500.00000000 AITBC minted by the treasury." in page.content.decode()
    response = approve(second_staff, pending)
    again = approve(second_staff, pending)

    assert "1 credit(s) minted (500.00000000 AITBC)." in messages_of(response)
    assert "0 credit(s) minted (0 AITBC)." in messages_of(again)
    wallets[0].refresh_from_db()
    assert wallets[0].balance == Decimal(600)
    assert mints() == 1
    credited = PendingCredit.objects.get()
    assert (credited.status, credited.decided_by.username) == (PendingCreditStatus.APPROVED, "approver")
    assert [r.action for r in StaffAction.objects.order_by("created_at")] == ["request credit", "approve credit"]
