import pytest
from django.test import Client

from tests.factories import JobFactory, MinerFactory, UserFactory


@pytest.fixture
def alice(db):
    return UserFactory(username="alice", password=True)


@pytest.fixture
def bob(db):
    return UserFactory(username="bob", password=True)


@pytest.fixture
def browser(alice) -> Client:
    """A browser signed in as alice."""
    client = Client()
    client.force_login(alice)
    return client


@pytest.fixture
def miner(db):
    return MinerFactory(miner_id="rig-1", models=("llama3.2", "smollm2-135m"))


@pytest.fixture
def finished_job(miner):
    """``finished_job(client, text)``: a paid job submitted, claimed and completed by ``miner``."""

    def finish(client, text="Paris.", *, prompt="What is the capital of France?"):
        return JobFactory(
            client=client,
            prompt=prompt,
            payment_amount="1",
            completed_by=miner,
            result={"text": text, "finish_reason": "stop"},
        )

    return finish


@pytest.fixture
def queued_job():
    def queue(client, prompt="hi"):
        return JobFactory(client=client, prompt=prompt)

    return queue
