"""A job settling on a verdict: completion signs its receipt but keeps its escrow, which the verdict
then releases (the answer agreed) or refunds (it was outvoted). Money: on PostgreSQL."""

from decimal import Decimal

import pytest

from accounts.services import user_get_or_create
from core.errors import Conflict
from jobs.services import job_claim, job_complete, job_submit, job_verdict_settle
from miners.capabilities import Capabilities
from miners.services import miner_register
from payments.selectors import wallet_of

MODEL = "llama3.2"

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


@pytest.fixture
def miner():
    miner, _ = miner_register(
        owner=user_get_or_create(username="provider"), miner_id="m-1", capabilities=Capabilities(models=(MODEL,))
    )
    return miner


def completed(miner, *, settle_on_verdict: bool):
    client = user_get_or_create(username="client")
    job = job_submit(
        client=client, model=MODEL, payload={"model": MODEL, "prompt": "hi"}, payment_amount=Decimal("2"),
        settle_on_verdict=settle_on_verdict,
    ).job  # fmt: skip
    (claimed,) = job_claim(miner=miner, job_id=job.pk)
    return job_complete(job_id=job.pk, miner=miner, result={"text": "ok"}, lease_token=claimed.lease_token)


def balance(username: str) -> Decimal:
    return wallet_of(user=user_get_or_create(username=username)).balance


def test_completion_keeps_the_escrow_of_a_job_settling_on_a_verdict(miner):
    completion = completed(miner, settle_on_verdict=True)
    assert completion.receipt is not None
    assert completion.job.payment.status == "escrowed"


def test_an_agreed_answer_is_paid(miner):
    job = completed(miner, settle_on_verdict=True).job
    before = balance("provider")
    settled = job_verdict_settle(job_id=job.pk, agreed=True)
    assert settled.payment.status == "released"
    assert balance("provider") > before


def test_an_outvoted_answer_is_refunded_to_the_client(miner):
    job = completed(miner, settle_on_verdict=True).job
    provider, client = balance("provider"), balance("client")
    settled = job_verdict_settle(job_id=job.pk, agreed=False)
    assert settled.payment.status == "refunded"
    assert (balance("provider"), balance("client")) == (provider, client + Decimal("2"))
    with pytest.raises(Conflict, match="no longer in escrow"):
        job_verdict_settle(job_id=job.pk, agreed=True)


def test_a_job_settled_at_completion_takes_no_verdict_settlement(miner):
    job = completed(miner, settle_on_verdict=False).job
    assert job.payment.status == "released"
    with pytest.raises(Conflict, match="no longer in escrow"):
        job_verdict_settle(job_id=job.pk, agreed=False)
