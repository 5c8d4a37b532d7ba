from datetime import timedelta

import pytest
from django.utils import timezone

from agents.models import Agent, AgentStatus
from agents.services import agents_mark_stale

pytestmark = pytest.mark.django_db

# The original coordinator's examples (its API reference), sent as written.
REGISTER = {
    "agent_id": "hermes-agent",
    "agent_type": "worker",
    "capabilities": ["data-processing", "analysis"],
    "services": ["task-execution"],
    "endpoints": {"http": "http://localhost:9002"},
    "metadata": {"version": "1.0.0"},
}
DISCOVER = {"status": "active", "agent_type": "worker"}
STATUS = {"status": "busy", "load_metrics": {"active_connections": 5, "pending_tasks": 2}}


def test_reference_register_example_registers_the_agent(agent_api):
    response = agent_api.post("/agents/register", REGISTER, format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "success"
    assert body["message"] == "Agent hermes-agent registered successfully"
    assert body["agent_id"] == "hermes-agent"
    assert body["registered_at"] and body["timestamp"]
    agent = Agent.objects.get(agent_id="hermes-agent")
    assert agent.owner == agent_api.user
    assert agent.version == "1.0.0"
    assert agent.status == AgentStatus.ACTIVE


def test_registering_again_updates_the_same_agent(agent_api):
    first = agent_api.post("/agents/register", REGISTER, format="json").json()
    again = agent_api.post("/v1/agents/register", {**REGISTER, "capabilities": ["analysis"]}, format="json").json()

    assert again["registered_at"] == first["registered_at"]
    assert Agent.objects.count() == 1
    assert Agent.objects.get().capabilities == ["analysis"]


def test_another_accounts_agent_id_is_a_conflict(agent_api, other_agent_api):
    agent_api.post("/agents/register", REGISTER, format="json")

    response = other_agent_api.post("/agents/register", REGISTER, format="json")

    assert response.status_code == 409
    assert response.json()["error_code"] == "AGENT_ID_TAKEN"


def test_a_client_key_cannot_register_an_agent(client_api):
    assert client_api.post("/agents/register", REGISTER, format="json").status_code == 403


def test_a_miner_may_not_claim_to_serve_the_agents_task_model(miner_api):
    body = {"capabilities": {"models": ["agent-task"]}}

    response = miner_api.post("/v1/miners/register", body, format="json")

    assert response.status_code == 422


def test_reference_discover_example_filters_by_status_and_type(agent_api, client_api, register_agent):
    agent_api.post("/agents/register", REGISTER, format="json")
    register_agent(agent_api, agent_id="provider-1", agent_type="provider")
    register_agent(agent_api, agent_id="worker-2", agent_type="worker")
    agent_api.put("/agents/worker-2/status", {"status": "inactive"}, format="json")

    response = client_api.post("/agents/discover", DISCOVER, format="json")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "success"
    assert body["query"] == DISCOVER
    assert body["count"] == 1
    (agent,) = body["agents"]
    assert agent["agent_id"] == "hermes-agent"
    assert agent["endpoints"] == {"http": "http://localhost:9002"}
    assert 0.99 <= agent["health_score"] <= 1
    assert set(agent) >= {
        "agent_id", "agent_type", "status", "capabilities", "services", "endpoints", "metadata", "last_heartbeat",
        "registration_time", "load_metrics", "health_score", "version", "tags",
    }  # fmt: skip


def test_discover_filters_by_capabilities_and_services(agent_api, register_agent):
    agent_api.post("/agents/register", REGISTER, format="json")
    register_agent(agent_api, agent_id="other", capabilities=("data-processing",))

    found = agent_api.post("/v1/agents/discover", {"capabilities": ["analysis"]}, format="json").json()
    served = agent_api.post("/api/v1/agents/discover", {"services": ["task-execution"]}, format="json").json()

    assert [a["agent_id"] for a in found["agents"]] == ["hermes-agent"]
    assert [a["agent_id"] for a in served["agents"]] == ["hermes-agent"]


def test_discover_echoes_the_fields_it_reads_and_not_the_rest_of_the_body(agent_api):
    # 1e400 parses to infinity, which no JSON answer can carry: echoed, it made the answer a 500.
    body = b'{"status": "active", "agent_type": "worker", "limit": 1e400, "note": "x"}'

    response = agent_api.post("/agents/discover", body, content_type="application/json")

    assert response.status_code == 200, response.content
    assert response.json()["query"] == {"status": "active", "agent_type": "worker"}


def test_get_agent_and_unknown_agent(agent_api):
    agent_api.post("/agents/register", REGISTER, format="json")

    found = agent_api.get("/agents/hermes-agent")
    missing = agent_api.get("/agents/nobody")

    assert found.status_code == 200
    assert found.json()["agent"]["capabilities"] == ["data-processing", "analysis"]
    assert missing.status_code == 404
    assert missing.json()["detail"] == "Agent not found"


def test_reference_status_example_records_status_and_load(agent_api):
    agent_api.post("/agents/register", REGISTER, format="json")

    response = agent_api.put("/agents/hermes-agent/status", STATUS, format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["message"] == "Agent hermes-agent status updated"
    assert body["new_status"] == "busy"
    assert body["load_metrics"] == {"active_connections": 5, "pending_tasks": 2}
    assert Agent.objects.get().status == AgentStatus.BUSY


def test_an_unknown_status_is_refused(agent_api):
    agent_api.post("/agents/register", REGISTER, format="json")

    assert agent_api.put("/agents/hermes-agent/status", {"status": "asleep"}, format="json").status_code == 422


def test_another_owners_agent_cannot_be_updated(agent_api, other_agent_api):
    agent_api.post("/agents/register", REGISTER, format="json")

    assert other_agent_api.put("/agents/hermes-agent/status", STATUS, format="json").status_code == 404
    assert other_agent_api.post("/agents/hermes-agent/heartbeat", {}, format="json").status_code == 404


def test_silent_agent_becomes_stale_and_heartbeat_revives_it(agent_api, settings):
    settings.AGENT_HEARTBEAT_TIMEOUT_SECONDS = 30
    agent_api.post("/agents/register", REGISTER, format="json")
    Agent.objects.update(last_heartbeat_at=timezone.now() - timedelta(seconds=31))

    assert agents_mark_stale() == 1
    stale = agent_api.get("/agents/hermes-agent").json()["agent"]
    assert stale["status"] == "stale"
    assert stale["health_score"] == 0.5  # no freshness left; no task failed

    beat = agent_api.post("/agents/hermes-agent/heartbeat", {"load_metrics": {"cpu_usage": 0.5}}, format="json")

    assert beat.status_code == 200
    assert beat.json()["agent_status"] == "active"
    assert beat.json()["load_metrics"] == {"cpu_usage": 0.5}
    assert Agent.objects.get().status == AgentStatus.ACTIVE


def test_an_agent_read_after_the_timeout_shows_stale_before_the_sweep(agent_api, settings):
    settings.AGENT_HEARTBEAT_TIMEOUT_SECONDS = 30
    agent_api.post("/agents/register", REGISTER, format="json")
    Agent.objects.update(last_heartbeat_at=timezone.now() - timedelta(seconds=45))

    assert agent_api.get("/agents/hermes-agent").json()["agent"]["status"] == "stale"


def test_health_score_falls_with_failed_tasks(agent_api):
    agent_api.post("/agents/register", REGISTER, format="json")
    Agent.objects.update(tasks_completed=1, tasks_failed=3)

    score = agent_api.get("/agents/hermes-agent").json()["agent"]["health_score"]

    assert 0.6 < score < 0.63  # fresh (≈0.5) + a quarter completed (0.125)
