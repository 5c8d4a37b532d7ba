"""The factories build rows as the services do, invariants included."""

from decimal import Decimal

import pytest

from accounts.services import api_key_authenticate
from jobs.models import JobStatus
from payments.models import Payment, PaymentStatus
from tests.factories import (
    PASSWORD,
    ApiKeyFactory,
    JobFactory,
    MinerFactory,
    PaymentFactory,
    UserFactory,
    WalletFactory,
)

pytestmark = pytest.mark.django_db


def test_a_user_built_twice_under_one_name_is_one_account_and_may_have_a_password():
    user = UserFactory(username="alice", password=True)
    assert UserFactory(username="alice") == user
    assert user.check_password(PASSWORD)


def test_an_api_key_carries_its_raw_key_which_authenticates():
    api_key = ApiKeyFactory(scope="miner")
    assert api_key_authenticate(raw_key=api_key.raw_key) == api_key
    assert api_key.scope == "miner"


def test_a_wallet_holds_the_welcome_credits_and_what_was_minted(settings):
    settings.AITBC_WELCOME_CREDITS = Decimal("100")
    assert WalletFactory(minted="5").balance == Decimal("105")


def test_a_miner_is_registered_online_serving_its_models():
    miner = MinerFactory(models=("m1", "m2"), max_concurrent_jobs=3)
    assert miner.status == "online"
    assert miner.max_concurrent_jobs == 3
    assert sorted(miner.served_models.values_list("name", flat=True)) == ["m1", "m2"]


def test_a_job_completed_by_a_miner_is_receipted_and_its_escrow_settled():
    miner = MinerFactory()
    job = JobFactory(payment_amount="2", completed_by=miner)
    assert job.status == JobStatus.COMPLETED
    assert job.miner == miner
    assert job.receipts.count() == 1
    assert Payment.objects.get(job=job).status == PaymentStatus.RELEASED


def test_a_job_claimed_by_a_miner_is_running_under_its_lease():
    job = JobFactory(claimed_by=MinerFactory())
    assert job.status == JobStatus.RUNNING
    assert job.lease_token


def test_a_payment_is_its_job_s_escrow():
    payment = PaymentFactory(amount="3")
    assert payment.status == PaymentStatus.ESCROWED
    assert payment.amount == Decimal("3")
