from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from agents.models import Agent, Task
from agents.services import agents_mark_stale, tasks_assign
from explorer.verify import verify_receipt
from jobs.models import Job, JobStatus
from miners.models import Miner
from payments.selectors import wallet_of

pytestmark = pytest.mark.django_db

# The original coordinator's example (its API reference), sent as written.
SUBMIT = {"task_data": {"model": "llama2", "prompt": "test prompt"}, "priority": "normal", "requirements": {}}


def poll(api, agent_id="hermes-agent", **body):
    response = api.post(f"/agents/{agent_id}/poll", body, format="json")
    assert response.status_code in (200, 204), response.content
    return response.json()["tasks"] if response.status_code == 200 else []


def test_reference_submit_example_queues_a_task(client_api):
    response = client_api.post("/tasks/submit", SUBMIT, format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "success"
    assert body["message"] == "Task submitted successfully"
    assert body["priority"] == "normal"
    job = Job.objects.get(pk=body["task_id"])
    assert (job.type, job.status, job.payload) == ("task", JobStatus.QUEUED, SUBMIT["task_data"])


@pytest.mark.parametrize("priority", ["bogus", "NORMAL", 3])
def test_an_unknown_priority_is_a_400(client_api, priority):
    response = client_api.post("/tasks/submit", {**SUBMIT, "priority": priority}, format="json")

    assert response.status_code == 400
    assert response.json()["detail"] == f"Invalid priority: {priority}"
    assert not Job.objects.exists()


def test_reference_status_example_reports_the_figures(client_api, agent_api, register_agent):
    register_agent(agent_api)
    client_api.post("/tasks/submit", {**SUBMIT, "priority": "urgent"}, format="json")
    client_api.post("/v1/tasks/submit", {**SUBMIT, "requirements": {"capabilities": ["gpu"]}}, format="json")
    tasks_assign()

    response = client_api.get("/tasks/status")

    assert response.status_code == 200
    stats = response.json()["stats"]
    assert stats["tasks_distributed"] == 1
    assert stats["queue_sizes"] == {"urgent": 0, "critical": 0, "high": 0, "normal": 1, "low": 0}
    balancer = stats["load_balancer_stats"]
    assert balancer["strategy"] == "least_connections"
    assert (balancer["total_assignments"], balancer["active_agents"], balancer["avg_agent_load"]) == (1, 1, 1.0)
    queues = client_api.get("/v1/tasks/queues").json()
    assert (queues["queue_sizes"]["normal"], queues["total_queued"]) == (1, 1)
    assert client_api.get("/tasks/queues/stats").json()["distribution"]["tasks_distributed"] == 1


def test_agent_receives_runs_and_is_paid_for_a_task_with_a_receipt(client_api, agent_api, register_agent):
    register_agent(agent_api)
    owner_before = wallet_of(user=agent_api.user).balance
    submitted = client_api.post("/tasks/submit", {**SUBMIT, "budget": "2.5"}, format="json").json()
    assert client_api.get(f"/tasks/{submitted['task_id']}").json()["task"]["payment_status"] == "escrowed"

    (task,) = poll(agent_api)
    assert task["task_id"] == submitted["task_id"]
    assert task["task_data"] == SUBMIT["task_data"]
    assert client_api.get(f"/tasks/{task['task_id']}").json()["task"]["status"] == "running"
    assert poll(agent_api) == []  # received once
    done = agent_api.post(
        f"/tasks/{task['task_id']}/result",
        {"agent_id": "hermes-agent", "result": {"answer": 42}, "lease_token": task["lease_token"]},
        format="json",
    )

    assert done.status_code == 200, done.content
    assert done.json()["task_status"] == "completed"
    assert verify_receipt(done.json()["receipt"]) == (True, None)
    shown = client_api.get(f"/v1/tasks/{task['task_id']}").json()["task"]
    assert (shown["status"], shown["result"], shown["agent_id"]) == ("completed", {"answer": 42}, "hermes-agent")
    assert shown["payment_status"] == "released"
    assert verify_receipt(shown["receipt"]) == (True, None)
    paid = wallet_of(user=agent_api.user).balance - owner_before
    assert Decimal("2") < paid <= Decimal("2.5")  # less the platform's fee
    assert Agent.objects.get().tasks_completed == 1


def test_another_client_cannot_read_a_task(client_api, other_client_api):
    task_id = client_api.post("/tasks/submit", SUBMIT, format="json").json()["task_id"]

    assert other_client_api.get(f"/tasks/{task_id}").status_code == 404


def test_a_task_no_agent_fits_waits_until_one_does(client_api, agent_api, register_agent):
    register_agent(agent_api, capabilities=("analysis",))
    body = {**SUBMIT, "requirements": {"capabilities": ["translation"], "agent_type": "worker"}}
    task_id = client_api.post("/tasks/submit", body, format="json").json()["task_id"]

    assert poll(agent_api) == []
    register_agent(agent_api, agent_id="translator", capabilities=("translation",))

    assert [t["task_id"] for t in poll(agent_api, agent_id="translator")] == [task_id]


def test_an_agent_below_full_reputation_is_given_a_task_at_once(client_api, agent_api, register_agent, settings):
    # The dispatcher chose the agent: the head start, which lets better miners polling for a job
    # claim it first, has no part in a lease it hands out. On SQLite the lease applied it, and the
    # task stayed queued until the head start had passed.
    settings.MATCHING_REPUTATION_HEADSTART_SECONDS = 60
    register_agent(agent_api)
    Miner.objects.filter(agent__agent_id="hermes-agent").update(reputation_score=0.5)
    task_id = client_api.post("/tasks/submit", SUBMIT, format="json").json()["task_id"]

    assert [t["task_id"] for t in poll(agent_api)] == [task_id]


def test_a_failed_task_goes_to_another_attempt(client_api, agent_api, register_agent):
    register_agent(agent_api)
    client_api.post("/tasks/submit", SUBMIT, format="json")
    (task,) = poll(agent_api)

    failed = agent_api.post(
        f"/tasks/{task['task_id']}/fail", {"agent_id": "hermes-agent", "error": "out of ideas"}, format="json"
    )

    assert failed.status_code == 200
    reported = failed.json()
    assert (reported["task_id"], reported["task_status"], reported["receipt"]) == (task["task_id"], "queued", None)
    (again,) = poll(agent_api)
    assert (again["task_id"], again["attempt"]) == (task["task_id"], 2)
    assert Agent.objects.get().tasks_failed == 1


def test_stale_agents_task_goes_to_another_and_its_late_result_is_refused(
    client_api, agent_api, other_agent_api, register_agent, settings
):
    settings.AGENT_HEARTBEAT_TIMEOUT_SECONDS = 30
    register_agent(agent_api, agent_id="slow")
    task_id = client_api.post("/tasks/submit", {**SUBMIT, "budget": "1"}, format="json").json()["task_id"]
    (task,) = poll(agent_api, agent_id="slow")
    register_agent(other_agent_api, agent_id="quick")
    Agent.objects.filter(agent_id="slow").update(last_heartbeat_at=timezone.now() - timedelta(seconds=31))

    assert agents_mark_stale() == 1
    (taken,) = poll(other_agent_api, agent_id="quick")
    assert taken["task_id"] == task_id
    late = agent_api.post(
        f"/tasks/{task_id}/result",
        {"agent_id": "slow", "result": "late", "lease_token": task["lease_token"]},
        format="json",
    )

    assert late.status_code == 409
    assert late.json()["error_code"] == "LEASE_NOT_HELD"
    job = Job.objects.get(pk=task_id)
    assert (job.status, job.miner.agent.agent_id, job.result) == (JobStatus.RUNNING, "quick", None)
    done = other_agent_api.post(
        f"/tasks/{task_id}/result",
        {"agent_id": "quick", "result": "on time", "lease_token": taken["lease_token"]},
        format="json",
    )
    assert done.status_code == 200
    assert client_api.get(f"/tasks/{task_id}").json()["task"]["result"] == "on time"


def test_clearing_a_queue_cancels_and_refunds_its_tasks(client_api, make_api):
    admin = make_api("admin", "operator")
    before = wallet_of(user=client_api.user).balance
    client_api.post("/tasks/submit", {**SUBMIT, "priority": "low", "budget": "3"}, format="json")
    client_api.post("/tasks/submit", {**SUBMIT, "priority": "high"}, format="json")
    assert wallet_of(user=client_api.user).balance == before - 3

    response = admin.post("/tasks/queues/low/clear")

    assert response.status_code == 200, response.content
    assert response.json()["cleared"] == 1
    assert wallet_of(user=client_api.user).balance == before
    assert list(Job.objects.values_list("priority", "status").order_by("priority")) == [
        (0, JobStatus.CANCELLED), (2, JobStatus.QUEUED),
    ]  # fmt: skip
    assert client_api.post("/tasks/queues/low/clear").status_code == 403
    assert admin.post("/tasks/queues/someday/clear").json()["detail"] == "Invalid priority: someday"


def test_a_task_over_the_wallet_is_refused_and_nothing_is_stored(client_api):
    response = client_api.post("/tasks/submit", {**SUBMIT, "budget": "1000000"}, format="json")

    assert response.status_code == 402
    assert not Task.objects.exists()
