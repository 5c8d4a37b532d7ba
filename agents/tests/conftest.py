import pytest


@pytest.fixture
def agent_api(make_api):
    return make_api("agent", "agent-owner")


@pytest.fixture
def other_agent_api(make_api):
    return make_api("agent", "other-agent-owner")


@pytest.fixture
def register_agent():
    def register(api, agent_id="hermes-agent", agent_type="worker", capabilities=("data-processing",), **extra):
        body = {"agent_id": agent_id, "agent_type": agent_type, "capabilities": list(capabilities), **extra}
        response = api.post("/agents/register", body, format="json")
        assert response.status_code == 200, response.content
        return response.json()

    return register
