"""The same job flow on PostgreSQL and on SQLite.

Submitting, claiming, completing and settling each have two implementations: hand-written SQL
on PostgreSQL (``jobs/sql.py``, ``payments/sql.py``, one round trip each) and the ORM on SQLite
(the embedded setup), chosen by the connection's vendor. One scenario drives both over the API
and must end the same way. The backend the test run is not on runs the scenario in a fresh
interpreter: with ``DATABASE_URL`` unset, that is SQLite in a temporary data dir.
"""

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.db import connection
from rest_framework.test import APIClient

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


def drive_the_job_flow_on_sqlite(tmp_path) -> dict:
    """The scenario in a fresh interpreter on a new SQLite database."""
    script = (
        "import json, django; django.setup()\n"
        "from django.core.management import call_command; from django.test.utils import setup_test_environment\n"
        "setup_test_environment(); call_command('migrate', verbosity=0)\n"
        "from tests.test_backends import drive_the_job_flow; print(json.dumps(drive_the_job_flow()))\n"
    )
    unset = ("DATABASE_URL", "REDIS_URL", "DRAMATIQ_BROKER_URL")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(AITBC_DATA_DIR=str(tmp_path), AITBC_EMBEDDED_WORKERS="false")
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.django_db
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_a_job_travels_the_same_way_on_postgresql_and_sqlite(backend, tmp_path):
    if backend == connection.vendor:
        outcome = json.loads(json.dumps(drive_the_job_flow()))
    elif backend == "sqlite":
        outcome = drive_the_job_flow_on_sqlite(tmp_path)
    else:
        pytest.skip("needs PostgreSQL (set DATABASE_URL); CI always runs it")
    assert outcome == EXPECTED
