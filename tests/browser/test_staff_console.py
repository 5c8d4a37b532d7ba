"""In a real browser: the admin home's health panel follows the feed, a ban goes through its
confirmation into the audit log, and a large credit waits for a second staff member."""

import re

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from core.models import StaffAction
from miners.models import Miner
from payments.models import LedgerTransaction, PendingCredit, PendingCreditStatus, TransactionKind
from tests.factories import WalletFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

PASSWORD = "correct-horse-battery-staple"
EVENT = '{"type": "dashboard.event", "kind": "miner.status", "data": {"miner_id": "rig-9", "status": "online"}}'


def staff(username: str):
    return get_user_model().objects.create_superuser(username=username, password=PASSWORD, email=f"{username}@x.org")


def log_in_admin(page, log_in, username: str):
    log_in(page, username, PASSWORD, path="/admin/login/?next=/admin/")
    expect(page.locator("#health")).to_be_visible()


def run_action(page, changelist: str, row_text: str, action: str):
    page.goto(changelist)
    page.locator("#result_list tr", has_text=row_text).locator("input.action-select").check()
    page.locator("select[name=action]").select_option(action)
    page.locator("button[name=index], input[name=index]").first.click()


def test_the_health_panel_follows_the_network_feed(page, log_in, make_api, register_miner):
    staff("root")
    sockets = []

    def feed(socket):
        # The feed, played by the test: it sends an event when the test says so.
        sockets.append(socket)

    page.route_web_socket(re.compile(r"/ws/dashboard/$"), feed)
    log_in_admin(page, log_in, "root")
    expect(page.locator("#health-miners-online")).to_have_text("1")  # the server's in-cluster miner

    register_miner(make_api("miner", "gpu-owner", miner_id="rig-9"))
    sockets[-1].send(EVENT)  # the page's socket now (it reconnects if one closes)

    expect(page.locator("#health-miners-online")).to_have_text("2")
    page.locator("#health-miners-online").click()
    expect(page.locator("#result_list")).to_contain_text("rig-9")


def test_a_ban_is_confirmed_with_a_reason_and_lands_in_the_audit_log(page, log_in, make_api, register_miner):
    staff("root")
    register_miner(make_api("miner", "gpu-owner", miner_id="rig-9"))
    log_in_admin(page, log_in, "root")

    run_action(page, "/admin/miners/miner/", "rig-9", "ban")
    expect(page.locator("#confirm-action")).to_contain_text("Miner rig-9 (gpu-owner, online) is banned")
    assert Miner.objects.get(miner_id="rig-9").banned_at is None
    page.get_by_label("Reason").fill("Forged results")
    page.get_by_role("button", name="Ban").click()

    expect(page.locator(".messagelist")).to_contain_text("1 miner(s) banned")
    assert Miner.objects.get(miner_id="rig-9").banned_reason == "Forged results"
    page.goto("/admin/core/staffaction/?q=forged")
    expect(page.locator("#result_list")).to_contain_text("ban miner")
    page.goto("/admin/")
    expect(page.locator("#recent-actions-module")).to_contain_text("rig-9")


def test_a_large_credit_waits_for_a_second_staff_members_approval(page, browser, server_url, log_in):
    staff("root")
    staff("second")
    WalletFactory(user__username="alice")
    log_in_admin(page, log_in, "root")

    run_action(page, "/admin/payments/wallet/?q=alice", "alice", "credit")
    page.get_by_label("Amount").fill("5000")
    page.get_by_label("Reason").fill("Outage compensation")
    page.get_by_role("button", name="Credit").click()

    expect(page.locator(".messagelist")).to_contain_text("wait for another staff member's approval")
    assert not LedgerTransaction.objects.filter(kind=TransactionKind.MINT, memo__contains="Outage").exists()

    other = browser.new_context(base_url=server_url).new_page()
    log_in_admin(other, log_in, "second")
    run_action(other, "/admin/payments/pendingcredit/", "alice", "approve")
    expect(other.locator("#confirm-action")).to_contain_text("5000.00000000 AITBC minted by the treasury.")
    other.get_by_label("Reason").fill("Checked the outage report")
    other.get_by_role("button", name="Approve and mint").click()

    expect(other.locator(".messagelist")).to_contain_text("1 credit(s) minted")
    assert PendingCredit.objects.get().status == PendingCreditStatus.APPROVED
    assert [r.action for r in StaffAction.objects.order_by("created_at")] == ["request credit", "approve credit"]
