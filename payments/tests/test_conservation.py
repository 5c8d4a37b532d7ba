"""Money is conserved whatever happens to jobs: concurrently on PostgreSQL, and over random
sequences of operations."""

import random
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import ServiceError
from jobs.models import Job, JobStatus
from jobs.services import job_cancel, job_claim, job_complete, job_fail, job_submit, jobs_expire_queued
from payments.models import LedgerEntry, LedgerTransaction, Payment, Wallet, WalletKind
from tests.factories import MinerFactory, WalletFactory


def assert_books_balance():
    wallets = list(Wallet.objects.all())
    assert sum(w.balance for w in wallets) == 0, "credits appeared or vanished"
    assert all(w.balance >= 0 for w in wallets if w.kind != WalletKind.TREASURY)
    for wallet in wallets:
        assert wallet.balance == sum(e.amount for e in LedgerEntry.objects.filter(wallet=wallet))
    for payment in Payment.objects.select_related("job", "escrow"):
        endings = LedgerTransaction.objects.filter(job=payment.job, kind__in=["settle", "refund"]).count()
        if payment.job.status in JobStatus.TERMINAL:
            assert endings == 1, f"job {payment.job.pk} ({payment.job.status}) settled {endings} times"
            assert payment.escrow.balance == 0
        else:
            assert endings == 0
            assert payment.escrow.balance == payment.amount
        assert payment.amount == payment.amount_paid + payment.amount_refunded or payment.status == "escrowed"


def make_network(clients: int):
    users = [WalletFactory(user__username=f"client-{i}").user for i in range(clients)]
    miner = MinerFactory(owner__username="rig-owner", miner_id="rig", models=("m",), max_concurrent_jobs=999)
    return users, miner


def submit(user, amount) -> Job:
    payload = {"type": "inference", "prompt": "x"}
    return job_submit(client=user, model="m", payload=payload, payment_amount=Decimal(amount), max_attempts=1).job


def complete(miner, job_id):
    return job_complete(job_id=job_id, miner=miner, result={"text": "ok"})


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_money_is_conserved_under_concurrent_submits_completions_cancels_and_expiries():
    users, miner = make_network(clients=10)
    rng = random.Random(7)

    def in_thread(operation, *args):
        try:
            return operation(*args)
        except ServiceError:  # a lost race (already cancelled, not leased, short of funds) changes nothing
            return None
        finally:
            connection.close()

    def cancel(job_id):
        return job_cancel(job_id=job_id)

    def fail(job_id):
        return job_fail(job_id=job_id, miner=miner, error_code="OOPS", error_message="x")

    def expire():
        return jobs_expire_queued(now=timezone.now() + timedelta(days=1))

    with ThreadPoolExecutor(max_workers=12) as pool:
        amounts = [f"{rng.randint(1, 30)}.5" for _ in range(50)]
        jobs = [j for j in pool.map(lambda a: in_thread(submit, rng.choice(users), a), amounts) if j is not None]
        assert len(jobs) >= 30
        claimed = in_thread(lambda: job_claim(miner=miner, limit=25))
        operations = [(expire,)] * 4
        for job in jobs:
            roll = rng.random()
            if roll < 0.5:
                operations.append((complete, miner, job.pk))
            if roll > 0.3:  # between 0.3 and 0.5 a cancel races the completion
                operations.append((cancel, job.pk))
            if roll > 0.8:
                operations.append((fail, job.pk))
        rng.shuffle(operations)
        list(pool.map(lambda operation: in_thread(*operation), operations))
    assert claimed
    assert_books_balance()


OPERATIONS = st.lists(
    st.tuples(st.sampled_from(["submit", "claim", "complete", "cancel", "fail", "expire"]), st.integers(0, 9)),
    max_size=25,
)


@pytest.mark.django_db
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=OPERATIONS)
def test_money_is_conserved_over_any_sequence_of_job_operations(operations):
    with transaction.atomic():
        users, miner = make_network(clients=3)
        jobs: list = []
        for name, n in operations:
            try:
                if name == "submit":
                    jobs.append(submit(users[n % 3], f"{n * 7 + 1}"))
                elif name == "claim":
                    job_claim(miner=miner, limit=n + 1)
                elif jobs and name == "complete":
                    complete(miner, jobs[n % len(jobs)].pk)
                elif jobs and name == "cancel":
                    job_cancel(job_id=jobs[n % len(jobs)].pk)
                elif jobs and name == "fail":
                    job_fail(job_id=jobs[n % len(jobs)].pk, miner=miner, error_code="OOPS", error_message="x")
                elif name == "expire":
                    jobs_expire_queued(now=timezone.now() + timedelta(days=1))
            except ServiceError:
                pass
            assert_books_balance()
        transaction.set_rollback(True)


@pytest.mark.django_db
def test_a_verified_jobs_decision_settles_and_refunds_in_one_go_and_the_books_balance():
    client = WalletFactory(user__username="verified-client").user
    # Owners with no wallet yet: their first settlement opens them.
    miners = [
        MinerFactory(owner__username=f"owner-{i}", miner_id=f"rig-{i}", models=("m",), max_concurrent_jobs=9)
        for i in range(3)
    ]
    payload = {"type": "inference", "prompt": "x"}
    for _ in range(2):  # the second with every wallet in place
        parent = job_submit(
            client=client, model="m", payload=payload, payment_amount=Decimal("1.5"), verification={"redundancy": 3}
        ).job
        attempts = [job_claim(miner=miner)[0] for miner in miners]
        for miner, attempt, text in zip(miners, attempts, ("wrong", "right", "right"), strict=True):
            job_complete(job_id=attempt.pk, miner=miner, result={"text": text}, lease_token=attempt.lease_token)
        parent.refresh_from_db()
        assert (parent.status, parent.result) == (JobStatus.COMPLETED, {"text": "right"})
        statuses = [Payment.objects.get(job=attempt).status for attempt in attempts]
        assert statuses == ["refunded", "released", "released"]
        assert_books_balance()
    assert Wallet.objects.filter(user__username__in=["owner-1", "owner-2"], balance__gt=0).count() == 2
    assert LedgerTransaction.objects.filter(kind="refund", memo="The answer was outvoted.").count() == 2


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_paid_completion_settles_in_one_statement_that_finds_the_wallets():
    (user,), miner = make_network(clients=1)
    for _ in range(2):  # the second with the payee's wallet in place
        job = submit(user, "2")
        (claimed,) = job_claim(miner=miner)
        with CaptureQueriesContext(connections["default"]) as captured:
            job_complete(job_id=job.pk, miner=miner, result={"text": "ok"}, lease_token=claimed.lease_token)
    statements = [query["sql"] for query in captured.captured_queries]
    # The lease read; BEGIN; the job and its receipt; the settlement, wallets and all; COMMIT.
    assert len(statements) == 5, "\n".join(statements)
    assert Payment.objects.get(job=job).status == "released"
    assert_books_balance()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_wallets_opened_by_another_settlement_meanwhile_still_get_this_one_paid(monkeypatch):
    from payments import services as payment_services

    (user,), miner = make_network(clients=1)
    job = submit(user, "2")
    (claimed,) = job_claim(miner=miner)
    assert not Wallet.objects.filter(kind=WalletKind.FEES).exists()
    look_for_wallets = payment_services._open_settlement_wallets

    def opened_meanwhile(*, payees):
        # Another completion, the platform's first too, opened (and committed) the fees wallet
        # after this settlement's statement passed it by, and before this one looked for it.
        payment_services.system_wallet(WalletKind.FEES)
        return look_for_wallets(payees=payees)

    monkeypatch.setattr(payment_services, "_open_settlement_wallets", opened_meanwhile)
    job_complete(job_id=job.pk, miner=miner, result={"text": "ok"}, lease_token=claimed.lease_token)

    assert Payment.objects.get(job=job).status == "released"
    assert Wallet.objects.get(kind=WalletKind.FEES).balance > 0
    assert_books_balance()
