"""The job and miner pages staff work in, and lists that read as people read."""

import pytest
from django.urls import reverse

from jobs.models import Job, Receipt
from miners.models import Miner
from payments.models import WalletKind
from tests.factories import WalletFactory


def poll(api):
    return api.post("/v1/miners/poll", {"max_wait_seconds": 0}, format="json")


@pytest.fixture
def paid_completed_job(client_api, miner_api, register_miner, submit_job) -> Job:
    register_miner(miner_api)
    job = submit_job(client_api, payment_amount="7.6")
    assert poll(miner_api).json()["job_id"] == job["job_id"]
    done = miner_api.post(f"/v1/miners/{job['job_id']}/result", {"result": {"output": "ok"}}, format="json")
    assert done.status_code == 200, done.content
    return Job.objects.select_related("payment").get(pk=job["job_id"])


def test_the_job_page_shows_its_money_trail_and_receipt(admin_client, paid_completed_job):
    job, receipt = paid_completed_job, Receipt.objects.get(job=paid_completed_job)

    page = admin_client.get(reverse("admin:jobs_job_change", args=[job.pk])).content.decode()

    assert f"{job.price} AITBC" in page
    assert reverse("admin:payments_payment_change", args=[job.payment.pk]) in page
    assert f"{job.payment.amount_charged} AITBC" in page
    assert f"job__id__exact={job.pk}" in page
    assert f"{reverse('admin:jobs_receipt_change', args=[receipt.pk])}?verify=1" in page


def test_the_receipt_page_verifies_the_signature(admin_client, paid_completed_job):
    receipt = Receipt.objects.get(job=paid_completed_job)
    url = reverse("admin:jobs_receipt_change", args=[receipt.pk])

    assert "The signature verifies" in admin_client.get(url, {"verify": "1"}).content.decode()

    Receipt.objects.filter(pk=receipt.pk).update(signed_json=receipt.signed_json.replace('"units"', '"unitz"'))
    assert (
        "The receipt does not verify: signature does not match."
        in admin_client.get(url, {"verify": "1"}).content.decode()
    )


def test_the_miner_page_shows_its_work_and_buttons_but_not_its_session_hash(
    admin_client, miner_api, register_miner, client_api, submit_job
):
    register_miner(miner_api)
    job = submit_job(client_api)
    assert poll(miner_api).json()["job_id"] == job["job_id"]
    miner = Miner.objects.get(miner_id="miner-1")

    page = admin_client.get(reverse("admin:miners_miner_change", args=[miner.pk])).content.decode()

    assert job["job_id"][:8] in page and "lease ends in" in page
    assert 'class="outcome-chart"' in page
    assert f"miner__id__exact={miner.pk}" in page
    assert 'name="action" value="ban"' in page and 'name="action" value="maintenance"' in page
    assert miner.session_token_hash not in page


def test_wallets_hide_empty_escrows_unless_asked_and_round_money(admin_client, paid_completed_job):
    WalletFactory(user__username="carol")
    wallets = reverse("admin:payments_wallet_changelist")

    shown = admin_client.get(wallets)
    every = admin_client.get(wallets, {"empty_escrows": "shown"})

    assert WalletKind.ESCROW not in {w.kind for w in shown.context["cl"].result_list}
    assert WalletKind.ESCROW in {w.kind for w in every.context["cl"].result_list}
    assert '<td class="field-balance_shown">100.00</td>' in shown.content.decode()


def test_the_ledger_list_shows_amounts_and_who_paid_whom(admin_client, paid_completed_job):
    page = admin_client.get(reverse("admin:payments_ledgertransaction_changelist")).content.decode()

    assert "alice → escrow" in page
    assert ">7.60<" in page


def test_admin_labels_read_as_english_and_the_empty_tasks_page_is_gone(admin_client, paid_completed_job):
    page = admin_client.get(reverse("admin:index")).content.decode()
    transaction = paid_completed_job.transactions.first()
    transaction_page = admin_client.get(reverse("admin:payments_ledgertransaction_change", args=[transaction.pk]))

    for label in ("API keys", "Block leaves", "Staff actions", "Pending credits", "Miner bans"):
        assert label in page
    assert "Ledger entries" in transaction_page.content.decode()
    assert "Dramatiq" not in page and "Entrys" not in page
