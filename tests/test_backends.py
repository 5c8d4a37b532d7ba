"""The same job flows on PostgreSQL and on SQLite.

Submitting, claiming, completing and settling each have two implementations: hand-written SQL
on PostgreSQL (``jobs/sql.py``, ``payments/sql.py``, one round trip each) and the ORM on SQLite
(the embedded setup), chosen by the connection's vendor. Each scenario drives both and must end
the same way: a job's way over the API, and a verified job whose decision breaks. The backend the test run is not on runs the scenario in a fresh
interpreter: with ``DATABASE_URL`` unset, that is SQLite in a temporary data dir.
"""

import json
import os
import subprocess
import sys
from unittest import mock

import pytest
from django.conf import settings
from django.db import connection
from rest_framework.test import APIClient

from accounts.services import user_get_or_create
from jobs import verification
from jobs.models import Job
from jobs.services import job_claim, job_complete, job_submit
from jobs.verification import verifications_decide_stalled
from miners.capabilities import Capabilities
from miners.services import miner_register
from payments.models import LedgerTransaction, Wallet, WalletKind
from tests.factories import ApiKeyFactory

EXPECTED = {
    "claimed": ["high priority, paid", "normal priority, free"],
    "left in the queue": "queued",
    "superseded result": [409, "LEASE_NOT_HELD"],
    "paid job": {
        "status": "completed",
        "result": {"output": "Paris."},
        "usage": {"units": 7},
        "price": "2.00000000",
        "amount_charged": "2.00000000",
        "payment_status": "released",
        "receipt verifies": True,
        "receipt says": {"provider": "rig-1", "status": "completed", "units": 7, "price": "2", "model": "llama3.2"},
    },
    "free job": {"status": "completed", "payment_status": None, "receipt verifies": True},
    "payment": {
        "status": "released",
        "amount": "2.00000000",
        "amount_paid": "2.00000000",
        "amount_refunded": "0.00000000",
    },
    "balances": {"client": "98.00000000", "miner's owner": "101.90000000", "fees": "0.10000000"},
    "ledger": ["escrow", "settle", "welcome", "welcome"],
}


def drive_the_job_flow() -> dict:
    """A client submits a free job, a paid urgent one and one no miner serves; a miner claims twice
    (best first), a stale result is refused, each result is stored with its receipt and the paid
    job settles. What the API and the ledger say afterwards."""
    client = authenticated(ApiKeyFactory(user__username="client", scope="client"))
    miner = authenticated(ApiKeyFactory(user__username="rig-owner", scope="miner"), miner_id="rig-1")
    miner.post("/v1/miners/register", {"capabilities": {"models": ["llama3.2"]}, "concurrency": 1}, format="json")

    def submit(prompt, model="llama3.2", **extra):
        body = {"payload": {"type": "inference", "prompt": prompt, "model": model}, **extra}
        response = client.post("/v1/jobs", body, format="json")
        assert response.status_code == 201, response.content
        return response.json()["job_id"]

    free = submit("normal priority, free")
    paid = submit("high priority, paid", priority="high", payment_amount="2")
    unserved = submit("no miner serves this", model="gpt-17")

    claimed, outcome = [], {}
    for _ in range(2):
        job = miner.post("/v1/miners/poll", {"max_wait_seconds": 0}, format="json").json()
        claimed.append(job["payload"]["prompt"])
        if job["job_id"] == paid:
            stale = miner.post(
                f"/v1/miners/{paid}/result", {"result": {"output": "late"}, "lease_token": "0" * 32}, format="json"
            )
            outcome["superseded result"] = [stale.status_code, stale.json()["error_code"]]
        done = miner.post(
            f"/v1/miners/{job['job_id']}/result",
            {"result": {"output": "Paris."}, "metrics": {"units": 7}, "lease_token": job["lease_token"]},
            format="json",
        )
        assert done.status_code == 200, done.content
    assert miner.post("/v1/miners/poll", {"max_wait_seconds": 0}, format="json").status_code == 204

    def job_view(job_id):
        view = client.get(f"/v1/jobs/{job_id}").json()
        receipt = client.get(f"/v1/jobs/{job_id}/receipt").json()
        verified = APIClient().post("/v1/receipts/verify", {"receipt": receipt}, format="json").json()
        return view, receipt, verified["valid"]

    paid_view, paid_receipt, paid_verifies = job_view(paid)
    free_view, _, free_verifies = job_view(free)
    payment = client.get(f"/v1/jobs/{paid}/payment").json()
    return {
        "claimed": claimed,
        "left in the queue": client.get(f"/v1/jobs/{unserved}").json()["status"],
        **outcome,
        "paid job": {
            "status": paid_view["status"],
            "result": paid_view["result"],
            "usage": paid_view["usage"],
            "price": paid_view["price"],
            "amount_charged": paid_view["amount_charged"],
            "payment_status": paid_view["payment_status"],
            "receipt verifies": paid_verifies,
            "receipt says": {
                "provider": paid_receipt["provider"],
                "status": paid_receipt["status"],
                "units": paid_receipt["units"],
                "price": paid_receipt["price"],
                "model": paid_receipt["metadata"]["model"],
            },
        },
        "free job": {
            "status": free_view["status"],
            "payment_status": free_view["payment_status"],
            "receipt verifies": free_verifies,
        },
        "payment": {k: payment[k] for k in ("status", "amount", "amount_paid", "amount_refunded")},
        "balances": {
            "client": str(Wallet.objects.get(user__username="client").balance),
            "miner's owner": str(Wallet.objects.get(user__username="rig-owner").balance),
            "fees": str(Wallet.objects.get(kind=WalletKind.FEES).balance),
        },
        "ledger": sorted(LedgerTransaction.objects.values_list("kind", flat=True)),
    }


def authenticated(api_key, *, miner_id: str | None = None) -> APIClient:
    api = APIClient()
    headers = {"HTTP_X_API_KEY": api_key.raw_key}
    if miner_id:
        headers["HTTP_X_MINER_ID"] = miner_id
    api.credentials(**headers)
    return api


def drive_a_decision_that_fails() -> dict:
    """A verified job's last answer comes in and the decision on it breaks: the answer is kept (the
    miner is not asked for it again), and housekeeping decides the job."""
    capabilities = Capabilities(models=("llama3.2",), max_concurrent_jobs=1)
    miners = [
        miner_register(owner=user_get_or_create(username=f"owner-{n}"), miner_id=f"rig-{n}", capabilities=capabilities)[
            0
        ]
        for n in (1, 2)
    ]
    payload = {"type": "inference", "model": "llama3.2", "prompt": "What is the capital of France?"}
    job = job_submit(client=user_get_or_create(username="client"), model="llama3.2", payload=payload,
                     verification={"redundancy": 2}).job  # fmt: skip
    outcome = {}
    for miner in miners:
        (attempt,) = job_claim(miner=miner)
        try:
            with mock.patch.object(verification, "_decide_verified", side_effect=RuntimeError("broken")):
                job_complete(job_id=attempt.pk, miner=miner, result={"text": "Paris."}, lease_token=attempt.lease_token)
        except RuntimeError as error:
            outcome[f"{miner.miner_id}'s answer"] = [Job.objects.get(pk=attempt.pk).status, str(error)]
    outcome["verified job, meanwhile"] = Job.objects.get(pk=job.pk).status
    outcome["decided by housekeeping"] = verifications_decide_stalled()
    job.refresh_from_db()
    outcome["verified job"] = [job.status, job.result]
    return outcome


A_DECISION_THAT_FAILS = {
    "rig-1's answer": ["completed", "broken"],
    "rig-2's answer": ["completed", "broken"],
    "verified job, meanwhile": "running",
    "decided by housekeeping": 1,
    "verified job": ["completed", {"text": "Paris."}],
}


def on_sqlite(scenario: str, tmp_path) -> dict:
    """``scenario`` (a function of this module) in a fresh interpreter on a new SQLite database."""
    script = (
        "import json, django; django.setup()\n"
        "from django.core.management import call_command; from django.test.utils import setup_test_environment\n"
        "setup_test_environment(); call_command('migrate', verbosity=0)\n"
        f"from tests.test_backends import {scenario}; print(json.dumps({scenario}()))\n"
    )
    unset = ("DATABASE_URL", "REDIS_URL", "DRAMATIQ_BROKER_URL")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(AITBC_DATA_DIR=str(tmp_path), AITBC_EMBEDDED_WORKERS="false")
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def on_backend(backend: str, scenario, tmp_path) -> dict:
    if backend == connection.vendor:
        return json.loads(json.dumps(scenario()))
    if backend == "sqlite":
        return on_sqlite(scenario.__name__, tmp_path)
    pytest.skip("needs PostgreSQL (set DATABASE_URL); CI always runs it")


@pytest.mark.django_db
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_a_job_travels_the_same_way_on_postgresql_and_sqlite(backend, tmp_path):
    assert on_backend(backend, drive_the_job_flow, tmp_path) == EXPECTED


@pytest.mark.django_db
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_a_verified_job_whose_decision_fails_keeps_the_answer_on_postgresql_and_sqlite(backend, tmp_path):
    assert on_backend(backend, drive_a_decision_that_fails, tmp_path) == A_DECISION_THAT_FAILS
