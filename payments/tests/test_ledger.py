from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, InternalError, connection, transaction
from django.utils import timezone

from accounts.services import user_get_or_create
from core.errors import PaymentRequired
from jobs.models import JobStatus
from jobs.selectors import miner_work_summary
from jobs.services import (
    job_cancel,
    job_claim,
    job_complete,
    job_fail,
    job_submit,
    jobs_expire_queued,
)
from miners.capabilities import Capabilities
from miners.services import miner_register
from payments.models import LedgerEntry, LedgerTransaction, Payment, Wallet, WalletKind
from payments.services import ledger_post, system_wallet, treasury_mint, wallet_open
from tests.factories import MinerFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice(settings):
    settings.AITBC_WELCOME_CREDITS = Decimal("100")
    return user_get_or_create(username="alice")


@pytest.fixture
def miner():
    return MinerFactory(owner__username="rig-owner", miner_id="rig", models=("m",), max_concurrent_jobs=99)


def balance(user) -> Decimal:
    return Wallet.objects.get(user=user).balance


def submit(user, amount="10", **kwargs):
    payload = {"type": "inference", "prompt": "x", "model": "m"}
    return job_submit(client=user, model="m", payload=payload, payment_amount=Decimal(amount), **kwargs).job


def assert_conserved():
    """Every credit in a wallet (escrow included) came from the treasury; no balance is negative."""
    wallets = Wallet.objects.all()
    assert sum(w.balance for w in wallets) == 0
    assert all(w.balance >= 0 for w in wallets if w.kind != WalletKind.TREASURY)
    for wallet in wallets:
        assert wallet.balance == sum(e.amount for e in LedgerEntry.objects.filter(wallet=wallet))


def test_a_new_wallet_gets_the_welcome_credits_once(alice):
    first = wallet_open(user=alice)
    assert wallet_open(user=alice) == first
    assert first.address.startswith("ait1")
    assert first.balance == Decimal("100")
    assert LedgerTransaction.objects.filter(kind="welcome").count() == 1
    assert_conserved()


def test_a_business_key_is_posted_once(alice):
    wallet = wallet_open(user=alice)
    treasury = system_wallet(WalletKind.TREASURY)
    first = ledger_post(business_key="k", kind="transfer", legs=[(wallet, -5), (treasury, 5)])
    again = ledger_post(business_key="k", kind="transfer", legs=[(wallet, -5), (treasury, 5)])
    assert first.pk == again.pk
    assert balance(alice) == Decimal("95")


def test_an_unbalanced_posting_is_refused(alice):
    with pytest.raises(ValueError, match="unbalanced"):
        ledger_post(business_key="k", kind="transfer", legs=[(wallet_open(user=alice), 5)])


def test_an_overdraft_is_402_and_moves_nothing(alice):
    wallet = wallet_open(user=alice)
    with pytest.raises(PaymentRequired) as raised:
        ledger_post(
            business_key="too-much", kind="transfer", legs=[(wallet, -101), (system_wallet(WalletKind.FEES), 101)]
        )
    assert raised.value.code == "INSUFFICIENT_FUNDS"
    assert balance(alice) == Decimal("100")
    assert not LedgerTransaction.objects.filter(business_key="too-much").exists()


def test_a_job_is_paid_from_escrow_on_completion(alice, miner, settings):
    settings.PLATFORM_FEE_PERCENT = Decimal("10")
    job = submit(alice, "10")
    assert balance(alice) == Decimal("90")
    assert Payment.objects.get(job=job).escrow.balance == Decimal("10")
    job_claim(miner=miner)
    completion = job_complete(job_id=job.pk, miner=miner, result={"text": "ok"})
    job.refresh_from_db()
    assert (job.payment_status, job.amount_charged) == ("released", Decimal("10"))
    assert balance(miner.owner) == Decimal("100") + Decimal("9")  # welcome credits + 90% of the price
    assert system_wallet(WalletKind.FEES).balance == Decimal("1")
    assert miner_work_summary(miner=miner)["earned"] == Decimal("9")
    assert completion.receipt is not None
    assert_conserved()


def test_a_catalog_job_is_charged_for_the_tokens_it_used(alice, settings):
    from catalog.models import CatalogModel

    settings.PLATFORM_FEE_PERCENT = Decimal("0")
    CatalogModel.objects.filter(name="smollm2-135m").update(price_per_1k_tokens=Decimal("2"))
    owner = user_get_or_create(username="gpu")
    capabilities = Capabilities(models=("smollm2-135m",))
    rig = miner_register(owner=owner, miner_id="gpu-rig", capabilities=capabilities)[0]
    payload = {"type": "inference", "prompt": "x", "params": {"max_tokens": 1000}}
    job = job_submit(client=alice, model="smollm2-135m", payload=payload).job
    assert job.price == Decimal("2")  # 1,000 tokens at 2 per 1k, held
    job_claim(miner=rig)
    job_complete(
        job_id=job.pk, miner=rig, result={"text": "ok", "usage": {"prompt_tokens": 50, "completion_tokens": 200}}
    )
    job.refresh_from_db()
    assert job.amount_charged == Decimal("0.4")  # 200 tokens generated, of the 1,000 held for
    assert balance(alice) == Decimal("99.6")
    assert_conserved()


def test_a_payment_amount_below_the_catalog_price_is_422(alice):
    from core.errors import Invalid

    payload = {"type": "inference", "prompt": "x", "params": {"max_tokens": 1000}}
    with pytest.raises(Invalid) as raised:
        job_submit(client=alice, model="smollm2-135m", payload=payload, payment_amount=Decimal("0"))
    assert raised.value.code == "INSUFFICIENT_PAYMENT"


def test_max_tokens_at_the_payloads_top_level_is_priced_and_limited_like_params(alice):
    from core.errors import Invalid

    top_level = {"type": "inference", "prompt": "x", "max_tokens": 1000, "params": {"temperature": 0}}
    job = job_submit(client=alice, model="smollm2-135m", payload=top_level).job
    assert job.price == Decimal("0.002")  # 1,000 tokens at 0.002 per 1k
    with pytest.raises(Invalid):
        job_submit(client=alice, model="smollm2-135m", payload={**top_level, "max_tokens": 100_000})


def test_a_negative_usage_report_cannot_turn_a_charge_around(alice, miner):
    job = submit(alice, "10")
    job_claim(miner=miner)
    job_complete(job_id=job.pk, miner=miner, result={"text": "ok", "usage": {"total_tokens": -5_000_000}})
    job.refresh_from_db()
    assert job.usage.get("total_tokens") is None
    assert job.amount_charged == Decimal("10")
    assert_conserved()


@pytest.mark.parametrize("ending", ["cancel", "expire", "fail"])
def test_a_job_that_ends_unpaid_is_refunded_in_full(alice, miner, ending):
    job = submit(alice, "10", max_attempts=1)
    if ending == "cancel":
        job_cancel(job_id=job.pk)
    elif ending == "expire":
        jobs_expire_queued(now=timezone.now() + timedelta(days=1))
    else:
        job_claim(miner=miner)
        job_fail(job_id=job.pk, miner=miner, error_code="INFERENCE_FAILED", error_message="boom")
    job.refresh_from_db()
    assert job.status in JobStatus.TERMINAL
    assert job.payment_status == "refunded"
    assert balance(alice) == Decimal("100")
    assert_conserved()


def test_a_job_the_client_cannot_afford_is_402_and_not_queued(alice):
    from jobs.models import Job

    wallet_open(user=alice)
    with pytest.raises(PaymentRequired):
        submit(alice, "1000")
    assert not Job.objects.exists()
    assert balance(alice) == Decimal("100")


def test_minted_credits_come_from_the_treasury(alice):
    treasury_mint(wallet=wallet_open(user=alice), amount="50", memo="top-up")
    assert balance(alice) == Decimal("150")
    assert system_wallet(WalletKind.TREASURY).balance == Decimal("-150")
    assert_conserved()


@pytest.mark.postgres
def test_postgres_refuses_an_unbalanced_transaction_at_commit(alice):
    wallet = wallet_open(user=alice)
    with pytest.raises(IntegrityError, match="does not balance"), transaction.atomic():
        posted = LedgerTransaction.objects.create(business_key="raw", kind="transfer")
        LedgerEntry.objects.create(transaction=posted, wallet=wallet, amount=5)
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")


@pytest.mark.postgres
@pytest.mark.parametrize(
    "statement", ["UPDATE payments_ledgerentry SET amount = 1", "DELETE FROM payments_ledgerentry"]
)
def test_postgres_refuses_to_change_ledger_rows(alice, statement):
    wallet_open(user=alice)
    with pytest.raises((IntegrityError, InternalError), match="append-only"), connection.cursor() as cursor:
        cursor.execute(statement)
