"""Workflows: a DAG checked at creation, executed step by step as real jobs, advanced after commit."""

import copy
import io
import json
from datetime import timedelta
from decimal import Decimal
from functools import partial

import pytest
from django.core.management import call_command

from agents import services
from agents.api.serializers import BRIEF
from agents.models import Execution, ExecutionStep, Workflow
from catalog.models import CatalogModel
from explorer import verify
from explorer.verify import verify_execution_receipt
from inference import engine
from jobs.models import Job, JobStatus
from payments.selectors import wallet_of
from tests.threads import run_at_once

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

MODEL = "smollm2-135m"


@pytest.fixture
def smollm_is_tiny(tiny_model_dir):
    """The catalog's smollm2-135m, answered by the tiny GPT-2 (the test database may have lost its seed);
    the tiny model loaded under that name is forgotten afterwards, so later tests load the real one."""
    engine.unload(MODEL)
    CatalogModel.objects.update_or_create(
        name=MODEL,
        defaults={
            "task": "text-generation",
            "source_kind": "directory",
            "source": str(tiny_model_dir),
            "default_max_tokens": 8,
            "max_tokens": 2000,
        },
    )
    yield
    engine.unload(MODEL)


@pytest.fixture
def host(smollm_is_tiny, settings, tmp_path):
    from inference.worker import ClusterHost

    settings.MODEL_CACHE_DIR = tmp_path
    host = ClusterHost([MODEL], miner_id="test-cluster", batch_size=4, listen=False)
    host.start()
    yield host
    host.stop()


def run_until_done(host, execution_id, rounds=10) -> Execution:
    for _ in range(rounds):
        host.drain(MODEL)
        execution = Execution.objects.get(pk=execution_id)
        if execution.status != "running":
            return execution
    return execution


def test_the_brief_example_runs_end_to_end_fanning_out_and_in(client_api, host):
    created = client_api.post("/v1/agents/workflows", BRIEF, format="json")
    assert created.status_code == 200, created.content
    workflow_id = created.json()["id"]

    started = client_api.post(
        f"/v1/agents/workflows/{workflow_id}/execute", {"inputs": {"topic": "Paris"}}, format="json"
    )
    assert started.status_code == 200, started.content
    body = started.json()
    assert (body["workflow_id"], body["status"], body["total_steps"]) == (workflow_id, "running", 3)
    assert body["started_at"]
    execution = run_until_done(host, body["execution_id"])

    assert execution.status == "completed", execution.error
    status = client_api.get(f"/api/v1/agents/executions/{execution.pk}/status").json()
    assert {step: state["status"] for step, state in status["step_states"].items()} == dict.fromkeys(
        ("facts", "merge", "poem"), "completed"
    )
    merge_job = Job.objects.get(pk=status["step_states"]["merge"]["job_id"])
    facts_text = status["step_states"]["facts"]["output"]
    poem_text = status["step_states"]["poem"]["output"]
    assert merge_job.payload["prompt"] == f"Combine: {facts_text} {poem_text}"
    assert Job.objects.get(pk=status["step_states"]["facts"]["job_id"]).payload["prompt"] == "List facts about Paris"
    assert status["final_result"] == status["step_states"]["merge"]["output"]
    facts, poem, merge = (ExecutionStep.objects.get(step_id=s) for s in ("facts", "poem", "merge"))
    assert merge.started_at >= max(facts.finished_at, poem.finished_at)  # the fan-in waited for both
    logs = client_api.get(f"/v1/agents/executions/{execution.pk}/logs").json()["logs"]
    assert [e["event"] for e in logs if e["step_id"] == "merge"] == ["queued", "finished"]
    bundle = client_api.get(f"/v1/agents/executions/{execution.pk}/receipt").json()
    assert verify_execution_receipt(bundle) == (True, None)
    assert status["verification_proof"] == bundle["receipt"]


def test_a_changed_step_receipt_fails_verification(client_api, host, tmp_path):
    workflow_id = client_api.post("/v1/agents/workflows", BRIEF, format="json").json()["id"]
    execution_id = client_api.post(
        f"/v1/agents/workflows/{workflow_id}/execute", {"inputs": {"topic": "Rome"}}, format="json"
    ).json()["execution_id"]
    run_until_done(host, execution_id)
    bundle = client_api.get(f"/v1/agents/executions/{execution_id}/receipt").json()

    tampered = copy.deepcopy(bundle)
    tampered["step_receipts"][1]["units"] += 1
    swapped = copy.deepcopy(bundle)
    swapped["step_receipts"][0], swapped["step_receipts"][1] = swapped["step_receipts"][1], swapped["step_receipts"][0]
    reordered = copy.deepcopy(bundle)
    reordered["receipt"]["merkle_root"] = "00" * 32

    assert verify_execution_receipt(tampered)[0] is False
    assert verify_execution_receipt(swapped)[0] is False
    assert verify_execution_receipt(reordered)[0] is False
    # The offline verifier's command line (``python -m explorer.verify``, ``manage.py verify_receipt``).
    (tmp_path / "good.json").write_text(json.dumps(bundle))
    (tmp_path / "bad.json").write_text(json.dumps(tampered))
    assert verify.main([str(tmp_path / "good.json")]) == 0
    assert verify.main([str(tmp_path / "bad.json")]) == 1
    out = io.StringIO()
    call_command("verify_receipt", str(tmp_path / "good.json"), stdout=out)
    assert out.getvalue().startswith("valid: signed by ") and "3 step receipt(s)" in out.getvalue()


@pytest.mark.parametrize(
    ("steps", "dependencies", "code"),
    [
        (
            {"a": {"model": MODEL, "prompt": "x"}, "b": {"model": MODEL, "prompt": "y"}},
            {"a": ["b"], "b": ["a"]},
            "CYCLE",
        ),
        ({"a": {"model": MODEL, "prompt": "x"}}, {"a": ["ghost"]}, "DANGLING_REFERENCE"),
        (
            {"a": {"model": MODEL, "prompt": "{{steps.b.output}}"}, "b": {"model": MODEL, "prompt": "y"}},
            {},
            "DANGLING_REFERENCE",
        ),
        ({"a": {"model": "no-such-model", "prompt": "x"}}, {}, "UNKNOWN_MODEL"),
    ],
)
def test_a_cycle_a_dangling_reference_or_an_unknown_model_is_a_422(
    client_api, smollm_is_tiny, steps, dependencies, code
):
    response = client_api.post(
        "/v1/agents/workflows", {"name": "bad", "steps": steps, "dependencies": dependencies}, format="json"
    )

    assert response.status_code == 422, response.content
    assert response.json()["error_code"] == code
    assert not Workflow.objects.exists()


def test_a_step_that_fails_retries_then_fails_the_execution_and_refunds_the_budget(
    client_api, make_api, settings, monkeypatch
):
    settings.JOB_MAX_ATTEMPTS = 1
    monkeypatch.setattr(services, "RETRY_BACKOFF", timedelta(0))
    agent_api = make_api("agent", "agent-owner")
    agent_api.post("/agents/register", {"agent_id": "flaky", "agent_type": "worker"}, format="json")
    before = wallet_of(user=client_api.user).balance
    workflow = {
        "name": "flaky",
        "max_cost_budget": "5",
        "steps": {
            "ask": {"type": "task", "task_type": "analysis", "task_data": {"q": "x"}, "retries": 1, "budget": "1"}
        },
    }
    workflow_id = client_api.post("/v1/agents/workflows", workflow, format="json").json()["id"]
    execution_id = client_api.post(f"/v1/agents/workflows/{workflow_id}/execute", {}, format="json").json()[
        "execution_id"
    ]
    assert wallet_of(user=client_api.user).balance == before - 5

    for attempt in (1, 2):
        polled = agent_api.post("/agents/flaky/poll", {}, format="json")
        assert polled.status_code == 200, (attempt, polled.content)
        (task,) = polled.json()["tasks"]
        failed = agent_api.post(f"/tasks/{task['task_id']}/fail", {"agent_id": "flaky", "error": "no"}, format="json")
        assert failed.status_code == 200
        services.executions_advance_running()

    execution = Execution.objects.get(pk=execution_id)
    assert execution.status == "failed"
    assert "Step ask failed" in execution.error
    assert wallet_of(user=client_api.user).balance == before
    events = [e["event"] for e in client_api.get(f"/v1/agents/executions/{execution_id}/logs").json()["logs"]]
    assert events == ["started", "queued", "retried", "requeued", "failed", "failed"]


def test_a_completed_task_step_is_paid_and_the_rest_of_the_budget_refunded(client_api, make_api):
    agent_api = make_api("agent", "agent-owner")
    agent_api.post("/agents/register", {"agent_id": "solver", "agent_type": "worker"}, format="json")
    before = wallet_of(user=client_api.user).balance
    workflow = {
        "name": "one",
        "max_cost_budget": "5",
        "steps": {"ask": {"type": "task", "task_data": {"q": "x"}, "budget": "2"}},
    }
    workflow_id = client_api.post("/v1/agents/workflows", workflow, format="json").json()["id"]
    execution_id = client_api.post(f"/v1/agents/workflows/{workflow_id}/execute", {}, format="json").json()[
        "execution_id"
    ]

    (task,) = agent_api.post("/agents/solver/poll", {}, format="json").json()["tasks"]
    agent_api.post(f"/tasks/{task['task_id']}/result", {"agent_id": "solver", "result": "42"}, format="json")

    execution = Execution.objects.get(pk=execution_id)
    assert (execution.status, execution.final_result, execution.total_cost) == ("completed", "42", Decimal("2"))
    assert wallet_of(user=client_api.user).balance == before - 2


def test_cancel_mid_run_cancels_running_steps_and_starts_nothing_new(client_api, smollm_is_tiny):
    workflow_id = client_api.post("/v1/agents/workflows", BRIEF, format="json").json()["id"]
    execution_id = client_api.post(
        f"/v1/agents/workflows/{workflow_id}/execute", {"inputs": {"topic": "Oslo"}}, format="json"
    ).json()["execution_id"]

    cancelled = client_api.post(f"/v1/agents/executions/{execution_id}/cancel")
    services.executions_advance_running()

    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    states = {step: state["status"] for step, state in cancelled.json()["step_states"].items()}
    assert states == {"facts": "cancelled", "poem": "cancelled", "merge": "cancelled"}
    assert set(Job.objects.values_list("status", flat=True)) == {JobStatus.CANCELLED}
    assert Job.objects.count() == 2
    assert client_api.post(f"/v1/agents/executions/{execution_id}/cancel").status_code == 409


def test_amounts_are_written_with_eight_decimals_zeros_included(client_api, smollm_is_tiny):
    workflow = {**BRIEF, "max_cost_budget": "5"}
    workflow_id = client_api.post("/v1/agents/workflows", workflow, format="json").json()["id"]
    assert client_api.get(f"/v1/agents/workflows/{workflow_id}").json()["max_cost_budget"] == "5.00000000"
    execution_id = client_api.post(
        f"/v1/agents/workflows/{workflow_id}/execute", {"inputs": {"topic": "Oslo"}}, format="json"
    ).json()["execution_id"]

    view = client_api.get(f"/v1/agents/executions/{execution_id}").json()

    assert view["step_states"]["merge"]["cost"] == "0.00000000", "a waiting step has cost nothing yet"
    assert view["total_cost"] == "0.00000000"
    assert view["budget"] == "5.00000000"


def test_two_advancers_at_once_start_each_step_once(client_user_workflow, monkeypatch):
    monkeypatch.setattr(services, "advance_after_commit", lambda execution_id: None)
    workflow, client = client_user_workflow
    execution = services.workflow_execute(workflow=workflow, client=client, inputs={"topic": "Lima"})
    assert run_at_once([partial(services.execution_advance, execution_id=execution.pk)] * 6) == []

    assert Job.objects.count() == 2  # facts and poem; merge waits for them
    assert sorted(ExecutionStep.objects.filter(job__isnull=False).values_list("step_id", flat=True)) == [
        "facts",
        "poem",
    ]
    assert execution.events.filter(kind="queued").count() == 2


@pytest.fixture
def client_user_workflow(smollm_is_tiny, client_api):
    workflow = services.workflow_create(owner=client_api.user, **{**BRIEF, "description": ""})
    return workflow, client_api.user


def test_an_execution_left_by_a_dead_advancer_goes_on_from_the_database(client_api, host, monkeypatch):
    from jobs import services as job_services

    workflow_id = client_api.post("/v1/agents/workflows", BRIEF, format="json").json()["id"]
    with monkeypatch.context() as dead:
        # The process that would advance it after facts and poem commit dies first: no hook runs.
        dead.setattr(job_services, "_finished_listeners", [])
        execution_id = client_api.post(
            f"/v1/agents/workflows/{workflow_id}/execute", {"inputs": {"topic": "Cairo"}}, format="json"
        ).json()["execution_id"]
        host.drain(MODEL)
        assert Job.objects.filter(status=JobStatus.COMPLETED).count() == 2
        assert not ExecutionStep.objects.get(step_id="merge").job_id

    services.executions_advance_running()  # housekeeping, in another process
    execution = run_until_done(host, execution_id)

    assert execution.status == "completed"
    assert Job.objects.count() == 3


def test_an_advance_costs_a_fixed_few_statements(client_api, monkeypatch, settings, django_assert_num_queries):
    """What a workflow adds per step beyond its jobs: taking a step in is 6 statements (with BEGIN and
    COMMIT), taking one in and starting the next 7, completing the execution with its receipt 8."""
    from jobs import services as job_services
    from jobs.services import Outcome, job_claim, jobs_complete
    from tests.factories import MinerFactory

    CatalogModel.objects.create(name="off-engine", task="text-generation", source_kind="hub", source="x/off-engine")
    miner = MinerFactory(models=("off-engine",), max_concurrent_jobs=8)
    step = {"type": "inference", "model": "off-engine", "params": {"max_tokens": 8}}
    workflow = services.workflow_create(
        owner=client_api.user,
        name="fan",
        steps={"a": {**step, "prompt": "a"}, "b": {**step, "prompt": "b"}, "c": {**step, "prompt": "c"}},
        dependencies={"c": ["a", "b"]},
    )
    execution = services.workflow_execute(workflow=workflow, client=client_api.user, inputs={})
    monkeypatch.setattr(job_services, "_finished_listeners", [])  # advanced by hand below
    settings.MODEL_CATALOG_CACHE_SECONDS = 3600  # as served: the catalog just read is reused

    def complete(job):
        jobs_complete(miner=miner, outcomes=[Outcome(job_id=job.pk, result={"text": job.payload["prompt"]})])

    first, second = job_claim(miner=miner, limit=8)
    complete(first)
    with django_assert_num_queries(6):
        services.execution_advance(execution_id=execution.pk)  # takes in one of a and b
    complete(second)
    with django_assert_num_queries(7):
        services.execution_advance(execution_id=execution.pk)  # takes in the other, starts c
    (last,) = job_claim(miner=miner, limit=8)
    complete(last)
    with django_assert_num_queries(8):
        services.execution_advance(execution_id=execution.pk)  # takes in c, signs the receipt

    execution.refresh_from_db()
    assert (execution.status, execution.final_result) == ("completed", "c")
