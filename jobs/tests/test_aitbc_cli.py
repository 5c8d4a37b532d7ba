"""The original AITBC CLI's client and miner commands, sent exactly as it sends them, against the
job queue: ``client submit`` (with and without ``--model``), ``client history --status pending``,
``miner register`` / ``poll`` / ``mine`` with a miner that declares no models, and the February
CLI's GET on a miner's ``earnings`` and ``jobs``."""

from decimal import Decimal

import pytest

from jobs.models import Job, JobStatus, JobType
from tests.factories import WalletFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def cli_client(make_api):
    api = make_api("client", "cli-client")
    WalletFactory(user=api.user, minted=Decimal(100))
    return api


@pytest.fixture
def cli_miner(make_api):
    """``aitbc miner register`` with its defaults: ``?miner_id=cli-miner``, the CPU shape, no models."""
    api = make_api("miner", "cli-owner")
    body = {"capabilities": {"cpu": {"cores": 4}, "memory": {"gb": 16}}}
    assert api.post("/v1/miners/register?miner_id=cli-miner", body, format="json").status_code == 200
    return api


def cli_submit(api, **task):
    """``aitbc client submit``: the task under ``payload``, and the TTL."""
    return api.post("/v1/jobs", {"payload": {"type": "inference", **task}, "ttl_seconds": 900}, format="json")


def cli_poll(api):
    return api.get("/v1/miners/poll", HTTP_X_MINER_ID="cli-miner")


def test_a_miner_declaring_no_models_is_offered_a_job_for_a_model_outside_the_catalog(cli_client, cli_miner):
    job_id = cli_submit(cli_client, prompt="hi", model="llama3").json()["job_id"]

    polled = cli_poll(cli_miner)

    assert polled.status_code == 200
    assert polled.json()["job_id"] == job_id
    # `aitbc miner mine` reports a plain string and "success".
    reported = cli_miner.post(
        f"/v1/miners/{job_id}/result",
        {"result": f"Processed job {job_id}", "success": True},
        format="json",
        HTTP_X_MINER_ID="cli-miner",
    )
    assert reported.status_code == 200
    assert Job.objects.get(pk=job_id).status == JobStatus.COMPLETED


def test_a_miner_declaring_no_models_is_not_offered_catalog_jobs(cli_client, cli_miner):
    assert cli_submit(cli_client, prompt="hi", model="smollm2-135m").status_code == 201

    assert cli_poll(cli_miner).status_code == 204


def test_a_job_outside_the_catalog_is_possible_once_a_miner_declaring_no_models_is_online(cli_client, cli_miner):
    assert cli_submit(cli_client, prompt="hi", model="llama3").json()["is_possible"] is True


def test_submit_without_a_model_runs_on_the_default_chat_model(cli_client):
    response = cli_submit(cli_client, prompt="What is the capital of France?")

    assert response.status_code == 201
    job = response.json()
    assert job["model"] == "smollm2-135m"
    assert job["payload"]["model"] == "smollm2-135m"


def test_the_default_model_is_a_setting(cli_client, settings):
    settings.JOB_DEFAULT_MODEL = "llama3"

    assert cli_submit(cli_client, prompt="hi").json()["model"] == "llama3"


def test_the_shipped_chat_model_answers_greedily_unless_asked_otherwise(cli_client):
    greedy = cli_submit(cli_client, prompt="hi", model="smollm2-135m").json()
    warm = cli_client.post(
        "/v1/jobs", {"prompt": "hi", "model": "smollm2-135m", "params": {"temperature": 0.9}}, format="json"
    ).json()
    older_client = cli_submit(cli_client, prompt="hi", model="smollm2-135m", temperature=0.5).json()

    assert greedy["payload"]["params"] == {"temperature": 0}
    assert warm["payload"]["params"] == {"temperature": 0.9}
    assert "params" not in older_client["payload"]


def test_an_embedding_job_needs_no_type_when_its_model_embeds(cli_client):
    cli_shape = cli_client.post(
        "/v1/jobs", {"payload": {"model": "minilm-l6", "input": ["a", "b"]}, "ttl_seconds": 900}, format="json"
    )
    tutorial_shape = cli_client.post("/v1/jobs", {"model": "minilm-l6", "input": "hello"}, format="json")

    assert cli_shape.status_code == 201, cli_shape.content
    assert cli_shape.json()["type"] == JobType.EMBEDDING
    assert tutorial_shape.status_code == 201, tutorial_shape.content
    assert tutorial_shape.json()["type"] == JobType.EMBEDDING


def test_an_input_without_a_prompt_or_a_model_is_an_embedding_job(cli_client):
    response = cli_client.post("/v1/jobs", {"input": ["a", "b"]}, format="json")

    assert response.status_code == 201, response.content
    assert (response.json()["type"], response.json()["model"]) == (JobType.EMBEDDING, "minilm-l6")


def test_history_status_pending_lists_the_queued_jobs(cli_client, cli_miner):
    queued = cli_submit(cli_client, prompt="hi", model="smollm2-135m").json()["job_id"]
    cli_submit(cli_client, prompt="hi", model="llama3")
    cli_poll(cli_miner)

    response = cli_client.get("/v1/jobs/history", {"limit": 10, "status": "pending"})

    assert response.status_code == 200
    assert [job["job_id"] for job in response.json()["items"]] == [queued]


def test_the_february_cli_reads_earnings_and_jobs_with_get(cli_client, cli_miner):
    job_id = cli_submit(cli_client, prompt="hi", model="llama3").json()["job_id"]
    cli_poll(cli_miner)

    earnings = cli_miner.get("/v1/miners/cli-miner/earnings", {"miner_id": "cli-miner"})
    jobs = cli_miner.get("/v1/miners/cli-miner/jobs", {"limit": 10, "miner_id": "cli-miner", "status": "running"})
    none_completed = cli_miner.get("/v1/miners/cli-miner/jobs", {"limit": 10, "status": "completed"})

    assert earnings.status_code == 200
    assert earnings.json()["jobs_running"] == 1
    assert [job["job_id"] for job in jobs.json()["items"]] == [job_id]
    assert none_completed.json()["items"] == []
