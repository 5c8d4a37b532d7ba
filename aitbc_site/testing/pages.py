"""Fixtures of the pages' tests: people with passwords, a browser signed in, jobs finished or queued.
The root conftest loads them as a plugin, for every app's page tests."""

from decimal import Decimal

import pytest
from django.test import Client

from accounts.services import user_get_or_create
from jobs.services import job_claim, job_complete, job_submit
from miners.capabilities import Capabilities
from miners.services import miner_register

PASSWORD = "correct horse battery staple"


def make_user(username: str):
    user = user_get_or_create(username=username)
    user.set_password(PASSWORD)
    user.save(update_fields=["password"])
    return user


@pytest.fixture
def alice(db):
    return make_user("alice")


@pytest.fixture
def bob(db):
    return make_user("bob")


@pytest.fixture
def browser(alice) -> Client:
    """A browser signed in as alice."""
    client = Client()
    client.force_login(alice)
    return client


@pytest.fixture
def miner(db):
    owner = user_get_or_create(username="gpu-owner")
    registered, _ = miner_register(
        owner=owner, miner_id="rig-1", capabilities=Capabilities(models=("llama3.2", "smollm2-135m"))
    )
    return registered


@pytest.fixture
def finished_job(miner):
    """``finished_job(client, text)``: a paid job submitted, claimed and completed by ``miner``."""

    def finish(client, text="Paris.", *, prompt="What is the capital of France?"):
        payload = {"type": "inference", "model": "llama3.2", "prompt": prompt}
        job = job_submit(client=client, model="llama3.2", payload=payload, payment_amount=Decimal("1")).job
        (claimed,) = job_claim(miner=miner, job_id=job.pk)
        job_complete(
            job_id=job.pk,
            miner=miner,
            result={"text": text, "finish_reason": "stop"},
            metrics={"duration_ms": 40, "units": 7},
            lease_token=claimed.lease_token,
        )
        job.refresh_from_db()
        return job

    return finish


@pytest.fixture
def queued_job():
    def queue(client, prompt="hi"):
        payload = {"type": "inference", "model": "llama3.2", "prompt": prompt}
        return job_submit(client=client, model="llama3.2", payload=payload).job

    return queue
