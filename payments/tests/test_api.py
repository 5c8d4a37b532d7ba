from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.db import connections
from rest_framework.test import APIClient

from core.crypto import signing
from explorer.models import BlockLeaf, LeafKind
from explorer.services import block_seal
from jobs.models import Job, JobStatus
from payments.models import LedgerTransaction, Payment, PaymentStatus, Wallet
from payments.services import wallet_open


@pytest.fixture
def unpaid_job(client_api, submit_job):
    """A job for a model outside the catalog, submitted without payment_amount: it has no payment."""
    job = submit_job(client_api)
    assert job["payment_id"] is None
    return job


def pay(api, job_id, amount="2.5", **extra):
    return api.post("/v1/payments", {"job_id": job_id, "amount": amount, **extra}, format="json")


def balance_of(user) -> Decimal:
    return Wallet.objects.get(user=user).balance


def complete_job(miner_api, register_miner, job_id, **metrics):
    register_miner(miner_api, models=["llama3.2"])
    polled = miner_api.post("/v1/miners/poll", {"max_wait_seconds": 0}, format="json")
    assert polled.json()["job_id"] == job_id
    completed = miner_api.post(
        f"/v1/miners/{job_id}/result", {"result": {"output": "done"}, "metrics": metrics}, format="json"
    )
    assert completed.status_code == 200, completed.content


def end_without_settling(job_id, status: str) -> None:
    """Put a job in a terminal state without the money moving, as a crash between the two would."""
    Job.objects.filter(pk=job_id).update(status=status, lease_token="", lease_expires_at=None)


# --- POST /v1/payments ------------------------------------------------------------------


def test_paying_for_an_unpriced_job_holds_the_amount_in_escrow(client_api, unpaid_job):
    response = pay(client_api, unpaid_job["job_id"], "2.5", currency="aitbc", escrow_timeout_seconds=600)

    assert response.status_code == 201, response.content
    payment = response.json()
    assert payment["payment_id"].startswith("pay_")
    assert response["Location"] == f"/v1/payments/{payment['payment_id']}"
    assert payment["job_id"] == unpaid_job["job_id"]
    assert (payment["amount"], payment["currency"], payment["payment_method"]) == ("2.50000000", "AITBC", "aitbc_token")
    assert (payment["status"], payment["amount_paid"], payment["amount_refunded"]) == (
        "escrowed",
        "0.00000000",
        "0.00000000",
    )
    assert payment["payer_address"] == Wallet.objects.get(user=client_api.user).address
    assert Wallet.objects.get(address=payment["escrow_address"]).balance == Decimal("2.5")
    assert balance_of(client_api.user) == Decimal(100) - Decimal("2.5")


def test_a_paid_job_shows_its_price_and_payment(client_api, unpaid_job):
    payment = pay(client_api, unpaid_job["job_id"], "2.5").json()

    job = client_api.get(f"/v1/jobs/{unpaid_job['job_id']}").json()
    assert (job["price"], job["payment_id"], job["payment_status"]) == ("2.50000000", payment["payment_id"], "escrowed")


def test_paying_for_a_job_that_already_has_a_payment_is_409(client_api, submit_job):
    job = submit_job(client_api, payment_amount="1")

    response = pay(client_api, job["job_id"])

    assert response.status_code == 409
    assert response.json()["error_code"] == "PAYMENT_EXISTS"
    assert Payment.objects.count() == 1


def test_paying_twice_for_the_same_job_is_409_and_holds_once(client_api, unpaid_job):
    assert pay(client_api, unpaid_job["job_id"]).status_code == 201

    again = pay(client_api, unpaid_job["job_id"])

    assert again.status_code == 409
    assert again.json()["error_code"] == "PAYMENT_EXISTS"
    assert balance_of(client_api.user) == Decimal(100) - Decimal("2.5")


def test_paying_for_a_finished_job_is_409(client_api, unpaid_job):
    client_api.post(f"/v1/jobs/{unpaid_job['job_id']}/cancel")

    response = pay(client_api, unpaid_job["job_id"])

    assert response.status_code == 409
    assert response.json()["error_code"] == "JOB_TERMINAL"
    assert not Payment.objects.exists()


def test_paying_for_another_clients_job_is_404(other_client_api, unpaid_job):
    response = pay(other_client_api, unpaid_job["job_id"])

    assert response.status_code == 404
    assert response.json()["error_code"] == "JOB_NOT_FOUND"
    assert not Payment.objects.exists()


@pytest.fixture
def no_welcome_credits(settings):
    settings.AITBC_WELCOME_CREDITS = 0  # wallets open empty


def test_paying_more_than_the_wallet_holds_is_402_and_changes_nothing(no_welcome_credits, client_api, unpaid_job):
    response = pay(client_api, unpaid_job["job_id"], "1")

    assert response.status_code == 402
    assert response.json()["error_code"] == "INSUFFICIENT_FUNDS"
    assert not Payment.objects.exists()
    assert not LedgerTransaction.objects.filter(kind="escrow").exists()
    assert client_api.get(f"/v1/jobs/{unpaid_job['job_id']}").json()["payment_id"] is None


@pytest.mark.parametrize(
    "override, field",
    [
        ({"amount": "0"}, "amount"),
        ({"amount": "-1"}, "amount"),
        ({"amount": "lots"}, "amount"),
        ({"amount": "0.000000001"}, "amount"),
        ({"currency": "BTC"}, "currency"),
        ({"payment_method": "bitcoin"}, "payment_method"),
        ({"escrow_timeout_seconds": 0}, "escrow_timeout_seconds"),
        ({"job_id": "not-a-uuid"}, "job_id"),
    ],
)
def test_invalid_payment_requests_are_422_with_field_errors(client_api, unpaid_job, override, field):
    body = {"job_id": unpaid_job["job_id"], "amount": "1", **override}

    response = client_api.post("/v1/payments", body, format="json")

    assert response.status_code == 422
    assert response.json()["error_code"] == "VALIDATION_ERROR"
    assert field in response.json()["errors"]


def test_a_miner_key_cannot_pay(miner_api, unpaid_job):
    assert pay(miner_api, unpaid_job["job_id"]).status_code == 403


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_payments_for_one_job_hold_escrow_once(client_api, submit_job):
    job_id = submit_job(client_api)["job_id"]

    def pay_in_thread(_):
        api = APIClient()
        api.credentials(HTTP_X_API_KEY=client_api.raw_key)
        try:
            return pay(api, job_id, "3").status_code
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=4) as pool:
        codes = sorted(pool.map(pay_in_thread, range(4)))

    assert codes == [201, 409, 409, 409]
    assert balance_of(client_api.user) == Decimal(97)


# --- Reading payments ------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/status"])
def test_the_payer_reads_its_payment(client_api, unpaid_job, suffix):
    created = pay(client_api, unpaid_job["job_id"]).json()

    response = client_api.get(f"/v1/payments/{created['payment_id']}{suffix}")

    assert response.status_code == 200
    assert response.json() == created


@pytest.mark.parametrize(
    "method, suffix",
    [("get", ""), ("get", "/status"), ("get", "/receipt"), ("post", "/release"), ("post", "/refund")],
)
def test_another_clients_payment_is_403(client_api, other_client_api, unpaid_job, method, suffix):
    payment_id = pay(client_api, unpaid_job["job_id"]).json()["payment_id"]

    response = getattr(other_client_api, method)(f"/v1/payments/{payment_id}{suffix}", format="json")

    assert response.status_code == 403
    assert response.json()["error_code"] == "FORBIDDEN"
    assert "amount" not in response.json()
    assert Payment.objects.get().status == PaymentStatus.ESCROWED


@pytest.mark.parametrize("suffix", ["", "/status", "/receipt"])
def test_an_unknown_payment_is_404(client_api, suffix):
    response = client_api.get(f"/v1/payments/pay_doesnotexist{suffix}")

    assert response.status_code == 404
    assert response.json()["error_code"] == "PAYMENT_NOT_FOUND"


def test_an_admin_key_reads_any_payment(client_api, make_api, unpaid_job):
    payment_id = pay(client_api, unpaid_job["job_id"]).json()["payment_id"]

    response = make_api("admin", "ops").get(f"/v1/payments/{payment_id}")

    assert response.status_code == 200
    assert response.json()["payment_id"] == payment_id


def test_the_receipt_lists_the_escrow_and_settlement_with_their_sealed_hashes(
    client_api, miner_api, register_miner, unpaid_job, django_assert_max_num_queries
):
    job_id = unpaid_job["job_id"]
    payment_id = pay(client_api, job_id, "2").json()["payment_id"]
    complete_job(miner_api, register_miner, job_id)
    block_seal()

    with django_assert_max_num_queries(8):
        response = client_api.get(f"/v1/payments/{payment_id}/receipt")

    assert response.status_code == 200
    receipt = response.json()
    assert (receipt["status"], receipt["amount_paid"], receipt["amount_refunded"]) == (
        "released",
        "2.00000000",
        "0.00000000",
    )
    assert receipt["released_at"] == receipt["settled_at"] is not None
    assert receipt["refunded_at"] is None
    escrow, settle = receipt["transactions"]
    assert (escrow["business_key"], escrow["kind"], escrow["amount"]) == (f"escrow:{job_id}", "escrow", "2.00000000")
    assert {entry["address"]: entry["amount"] for entry in escrow["entries"]} == {
        receipt["payer_address"]: "-2.00000000",
        receipt["escrow_address"]: "2.00000000",
    }
    assert (settle["business_key"], settle["kind"], settle["amount"]) == (f"settle:{job_id}", "settle", "2.00000000")
    sealed = dict(BlockLeaf.objects.filter(kind=LeafKind.TRANSACTION).values_list("ref", "leaf_hash"))
    assert escrow["hash"] == sealed[str(escrow["id"])]
    assert settle["hash"] == sealed[str(settle["id"])]


def test_completing_a_paid_job_stores_its_receipt_with_the_settled_price(
    client_api, miner_api, register_miner, unpaid_job
):
    job_id = unpaid_job["job_id"]
    pay(client_api, job_id, "2")
    register_miner(miner_api, models=["llama3.2"])
    miner_api.post("/v1/miners/poll", {"max_wait_seconds": 0}, format="json")

    returned = miner_api.post(f"/v1/miners/{job_id}/result", {"result": {"output": "done"}}, format="json").json()

    stored = client_api.get(f"/v1/jobs/{job_id}/receipt").json()
    assert stored == returned["receipt"]
    assert (stored["price"], signing.verify(stored)) == ("2", (True, None))
    job = client_api.get(f"/v1/jobs/{job_id}").json()
    assert (job["status"], job["payment_status"]) == ("completed", "released")


@pytest.mark.postgres
def test_a_paid_completion_whose_escrow_is_gone_changes_nothing(client_api, miner_api, register_miner, unpaid_job):
    from jobs.services import job_complete
    from miners.models import Miner

    job_id = unpaid_job["job_id"]
    payment_id = pay(client_api, job_id, "2").json()["payment_id"]
    register_miner(miner_api, models=["llama3.2"])
    miner_api.post("/v1/miners/poll", {"max_wait_seconds": 0}, format="json")
    Payment.objects.filter(payment_id=payment_id).update(status=PaymentStatus.REFUNDED)  # a broken invariant

    with pytest.raises(RuntimeError, match="did not settle"):
        job_complete(job_id=job_id, miner=Miner.objects.get(), result={"output": "done"})

    job = Job.objects.get(pk=job_id)
    assert (job.status, job.payment_status, job.receipts.count()) == (JobStatus.RUNNING, PaymentStatus.REFUNDED, 0)


# --- GET /v1/jobs/{id}/payment ---------------------------------------------------------


def test_a_catalog_jobs_payment_is_its_price_for_max_tokens(client_api):
    submitted = client_api.post(
        "/v1/jobs", {"prompt": "hi", "model": "smollm2-135m", "params": {"max_tokens": 500}}, format="json"
    ).json()

    response = client_api.get(f"/v1/jobs/{submitted['job_id']}/payment")

    assert response.status_code == 200
    payment = response.json()
    assert payment["amount"] == "0.00100000"  # 0.002 per 1k tokens × 500
    assert (payment["payment_id"], payment["status"]) == (submitted["payment_id"], "escrowed")
    assert payment["job_id"] == submitted["job_id"]


def test_a_jobs_payment_is_404_payment_not_found_when_it_has_none(client_api, unpaid_job):
    response = client_api.get(f"/v1/jobs/{unpaid_job['job_id']}/payment")

    assert response.status_code == 404
    assert response.json()["error_code"] == "PAYMENT_NOT_FOUND"


def test_another_clients_job_payment_is_404_like_the_job(client_api, other_client_api, submit_job):
    job = submit_job(client_api, payment_amount="1")

    response = other_client_api.get(f"/v1/jobs/{job['job_id']}/payment")

    assert response.status_code == 404
    assert response.json()["error_code"] == "JOB_NOT_FOUND"


# --- Release and refund ----------------------------------------------------------------


def test_releasing_a_payment_that_completion_settled_is_409(client_api, miner_api, register_miner, unpaid_job):
    payment_id = pay(client_api, unpaid_job["job_id"]).json()["payment_id"]
    complete_job(miner_api, register_miner, unpaid_job["job_id"])

    response = client_api.post(f"/v1/payments/{payment_id}/release")

    assert response.status_code == 409
    assert response.json()["error_code"] == "PAYMENT_NOT_ESCROWED"


def test_releasing_a_queued_jobs_payment_is_409(client_api, unpaid_job):
    payment_id = pay(client_api, unpaid_job["job_id"]).json()["payment_id"]

    response = client_api.post(f"/v1/payments/{payment_id}/release")

    assert response.status_code == 409
    assert client_api.get(f"/v1/payments/{payment_id}").json()["status"] == "escrowed"


def test_releasing_a_completed_but_unsettled_job_pays_its_miner(
    client_api, miner_api, register_miner, submit_job, settings
):
    settings.PLATFORM_FEE_PERCENT = Decimal(5)
    job = submit_job(client_api, payment_amount="2")
    register_miner(miner_api, models=["llama3.2"])
    miner_api.post("/v1/miners/poll", {"max_wait_seconds": 0}, format="json")
    end_without_settling(job["job_id"], JobStatus.COMPLETED)
    miner_before = wallet_open(user=miner_api.user).balance

    response = client_api.post(
        f"/v1/payments/{job['payment_id']}/release", {"job_id": job["job_id"], "reason": "done"}, format="json"
    )

    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["amount_paid"]) == ("released", "2.00000000")
    assert balance_of(miner_api.user) - miner_before == Decimal("1.9")
    assert client_api.get(f"/v1/jobs/{job['job_id']}").json()["payment_status"] == "released"


def test_refunding_a_queued_jobs_payment_is_409_job_active(client_api, unpaid_job):
    payment_id = pay(client_api, unpaid_job["job_id"]).json()["payment_id"]

    response = client_api.post(f"/v1/payments/{payment_id}/refund", {"reason": "changed my mind"}, format="json")

    assert response.status_code == 409
    assert response.json()["error_code"] == "JOB_ACTIVE"
    assert Payment.objects.get().status == PaymentStatus.ESCROWED


def test_refunding_a_payment_already_refunded_by_cancellation_is_409(client_api, unpaid_job):
    payment_id = pay(client_api, unpaid_job["job_id"]).json()["payment_id"]
    client_api.post(f"/v1/jobs/{unpaid_job['job_id']}/cancel")

    response = client_api.post(f"/v1/payments/{payment_id}/refund")

    assert response.status_code == 409
    assert response.json()["error_code"] == "PAYMENT_NOT_ESCROWED"
    assert balance_of(client_api.user) == Decimal(100)


def test_refunding_a_failed_but_unrefunded_job_returns_the_escrow(client_api, unpaid_job):
    payment_id = pay(client_api, unpaid_job["job_id"], "4").json()["payment_id"]
    end_without_settling(unpaid_job["job_id"], JobStatus.FAILED)

    response = client_api.post(f"/v1/payments/{payment_id}/refund", {"reason": "never ran"}, format="json")

    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["amount_refunded"]) == ("refunded", "4.00000000")
    assert response.json()["refunded_at"] is not None
    assert balance_of(client_api.user) == Decimal(100)
    assert LedgerTransaction.objects.get(business_key=f"refund:{unpaid_job['job_id']}").memo == "never ran"
    assert client_api.get(f"/v1/jobs/{unpaid_job['job_id']}").json()["payment_status"] == "refunded"


def test_an_admin_key_refunds_another_clients_payment(client_api, make_api, unpaid_job):
    payment_id = pay(client_api, unpaid_job["job_id"]).json()["payment_id"]
    end_without_settling(unpaid_job["job_id"], JobStatus.EXPIRED)

    response = make_api("admin", "ops").post(f"/v1/payments/{payment_id}/refund")

    assert response.status_code == 200
    assert balance_of(client_api.user) == Decimal(100)


def test_refunding_a_completed_jobs_payment_is_409(client_api, unpaid_job):
    payment_id = pay(client_api, unpaid_job["job_id"]).json()["payment_id"]
    end_without_settling(unpaid_job["job_id"], JobStatus.COMPLETED)

    response = client_api.post(f"/v1/payments/{payment_id}/refund")

    assert response.status_code == 409
    assert Payment.objects.get().status == PaymentStatus.ESCROWED


@pytest.mark.parametrize("body", [{"payment_id": "pay_other"}, {"job_id": "6f1c2a34-5b6d-4e7f-8a9b-0c1d2e3f4a5b"}])
def test_a_release_naming_another_payment_or_job_is_422(client_api, unpaid_job, body):
    payment_id = pay(client_api, unpaid_job["job_id"]).json()["payment_id"]

    response = client_api.post(f"/v1/payments/{payment_id}/release", body, format="json")

    assert response.status_code == 422
    assert set(body) <= set(response.json()["errors"])
