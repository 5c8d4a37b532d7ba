import asyncio

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter

from agents.consumers import AgentConsumer
from aitbc_site.routing import websocket_urlpatterns
from core import sockets
from jobs.models import Job, JobStatus
from tests.sockets import Socket

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("in_memory_channel_layer")]

application = AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
SUBMIT = {"task_data": {"model": "llama2", "prompt": "test prompt"}, "priority": "normal", "requirements": {}}


def open_socket(agent_id="hermes-agent", key=None):
    headers = [(b"x-api-key", key.encode())] if key else []
    return Socket(application, f"/ws/agents/{agent_id}/", headers=headers)


def test_a_task_submitted_after_connecting_is_pushed_with_its_lease(client_api, agent_api, register_agent, monkeypatch):
    monkeypatch.setattr(AgentConsumer, "WAIT_SECONDS", 1.0)
    register_agent(agent_api)

    async def scenario():
        socket = open_socket(key=agent_api.raw_key)
        assert (await socket.connect())[0]
        nothing_yet = await socket.receive_nothing(timeout=0.2)
        submitted = await sync_to_async(client_api.post)("/tasks/submit", SUBMIT, format="json")
        pushed = await socket.receive_json_from(timeout=10)
        await socket.disconnect()
        return nothing_yet, submitted.json()["task_id"], pushed

    nothing_yet, task_id, pushed = async_to_sync(scenario)()

    assert nothing_yet
    assert pushed["type"] == "task.assigned"
    assert (pushed["task"]["task_id"], pushed["task"]["task_data"]) == (task_id, SUBMIT["task_data"])
    job = Job.objects.get(pk=task_id)
    assert (job.status, job.lease_token) == (JobStatus.RUNNING, pushed["task"]["lease_token"])


@pytest.mark.parametrize(
    ("scope", "agent_id", "code"),
    [(None, "hermes-agent", 4401), ("client", "hermes-agent", 4403), ("agent", "nobody", 4404)],
)
def test_refused_sockets_close_with_their_code(make_api, agent_api, register_agent, scope, agent_id, code):
    register_agent(agent_api)
    key = make_api(scope, f"{scope}-user").raw_key if scope else None

    async def scenario():
        socket = open_socket(agent_id=agent_id, key=key)
        await socket.connect()
        closed = await socket.receive_output()
        await socket.disconnect()
        return closed["code"]

    assert async_to_sync(scenario)() == code


def test_an_executions_page_socket_follows_its_steps_until_it_ends(client_api, agent_api, register_agent):
    register_agent(agent_api)
    workflow = {"name": "one", "steps": {"ask": {"type": "task", "task_data": {"q": "x"}}}}
    workflow_id = client_api.post("/v1/agents/workflows", workflow, format="json").json()["id"]
    execution_id = client_api.post(f"/v1/agents/workflows/{workflow_id}/execute", {}, format="json").json()[
        "execution_id"
    ]

    async def scenario():
        socket = Socket(
            application, f"/ws/executions/{execution_id}/", headers=[(b"x-api-key", client_api.raw_key.encode())]
        )
        assert (await socket.connect())[0]
        first = await socket.receive_json_from(timeout=5)
        (task,) = (await sync_to_async(agent_api.post)("/agents/hermes-agent/poll", {}, format="json")).json()["tasks"]
        await sync_to_async(agent_api.post)(
            f"/tasks/{task['task_id']}/result", {"agent_id": "hermes-agent", "result": "42"}, format="json"
        )
        last = await socket.receive_json_from(timeout=10)
        closed = await socket.receive_output(timeout=5)
        await socket.disconnect()
        return first, last, closed

    first, last, closed = async_to_sync(scenario)()

    assert (first["type"], first["status"], first["step_states"]["ask"]["status"]) == (
        "execution.status",
        "running",
        "running",
    )
    assert (last["status"], last["step_states"]["ask"]["status"], last["final_result"]) == (
        "completed",
        "completed",
        "42",
    )
    assert closed == {"type": "websocket.close", "code": 1000}


@pytest.mark.parametrize(("scope", "code"), [(None, 4401), ("agent", 4403), ("client", 4404)])
def test_an_executions_socket_refuses_others(client_api, make_api, scope, code):
    workflow = {"name": "one", "steps": {"ask": {"type": "task", "task_data": {"q": "x"}}}}
    workflow_id = client_api.post("/v1/agents/workflows", workflow, format="json").json()["id"]
    execution_id = client_api.post(f"/v1/agents/workflows/{workflow_id}/execute", {}, format="json").json()[
        "execution_id"
    ]
    headers = [(b"x-api-key", make_api(scope, f"other-{scope}").raw_key.encode())] if scope else []

    async def scenario():
        socket = Socket(application, f"/ws/executions/{execution_id}/", headers=headers)
        await socket.connect()
        closed = await socket.receive_output()
        await socket.disconnect()
        return closed["code"]

    assert async_to_sync(scenario)() == code


def test_a_socket_whose_application_is_cancelled_stops_taking_tasks(agent_api, register_agent, monkeypatch):
    monkeypatch.setattr(AgentConsumer, "WAIT_SECONDS", 1.0)
    register_agent(agent_api)

    async def scenario():
        socket = open_socket(key=agent_api.raw_key)
        assert (await socket.connect())[0]
        (consumer,) = [open_one for open_one in sockets._open_sockets if isinstance(open_one, AgentConsumer)]
        socket.future.cancel()  # as a server gives up on an application that outlived its connection
        _, polling = await asyncio.wait({consumer.pusher}, timeout=AgentConsumer.WAIT_SECONDS + 5)
        return polling

    assert async_to_sync(scenario)() == set()
