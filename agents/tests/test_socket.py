import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from agents.consumers import AgentConsumer
from aitbc_site.routing import websocket_urlpatterns
from jobs.models import Job, JobStatus

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("in_memory_channel_layer")]

application = AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
SUBMIT = {"task_data": {"model": "llama2", "prompt": "test prompt"}, "priority": "normal", "requirements": {}}


def open_socket(agent_id="hermes-agent", key=None):
    headers = [(b"x-api-key", key.encode())] if key else []
    return WebsocketCommunicator(application, f"/ws/agents/{agent_id}/", headers=headers)


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
