"""The reference agent (``runagent``) against a live coordinator, on the platform's engine."""

import threading
import time

import httpx
import pytest

from agents.runner import RunnerError, TaskRunner
from inference.testing import TINY
from jobs.models import Job, JobStatus

pytestmark = pytest.mark.django_db(transaction=True)


def test_reference_agent_runs_a_submitted_task_on_the_engine(
    live_server, tiny_model, client_api, make_api, tmp_path, caplog
):
    agent_key = make_api("agent", "agent-owner").raw_key
    body = {
        "task_data": {"task_type": "text-generation", "prompt": "The coordinator", "parameters": {"max_tokens": 6}},
        "priority": "high",
        "requirements": {"capabilities": ["text-generation"]},
    }
    task_id = client_api.post("/tasks/submit", body, format="json").json()["task_id"]
    runner = TaskRunner(
        url=live_server.url, api_key=agent_key, agent_id="reference", generation_model=TINY, embedding_model=None,
        poll_wait=1, heartbeat_seconds=1, cache_dir=tmp_path, max_tasks=1,
    )  # fmt: skip
    watchdog = threading.Timer(60, runner.stop)
    watchdog.start()
    try:
        assert runner.run() == 1
    finally:
        watchdog.cancel()

    job = Job.objects.get(pk=task_id)
    assert job.status == JobStatus.COMPLETED
    assert job.miner.agent.agent_id == "reference"
    task = client_api.get(f"/tasks/{task_id}").json()["task"]
    assert isinstance(task["result"]["text"], str)
    assert task["result"]["usage"]["completion_tokens"] > 0
    assert f"task {task_id} answered" in caplog.text, "the agent says what it did, one line a task"


def test_parameters_in_the_task_data_itself_apply(tiny_model):
    from agents.runner import run_task
    from inference import engine

    model = engine.load(engine.ModelSpec.from_catalog(tiny_model))
    flat = run_task({"generation": model}, {"prompt": "The coordinator", "max_tokens": 3, "temperature": 0})
    nested = run_task(
        {"generation": model}, {"prompt": "The coordinator", "parameters": {"max_tokens": 3}, "max_tokens": 9}
    )

    assert flat["usage"]["completion_tokens"] == nested["usage"]["completion_tokens"] == 3


def test_a_client_key_is_refused(live_server, tiny_model, client_api, tmp_path):
    runner = TaskRunner(
        url=live_server.url, api_key=client_api.raw_key, agent_id="x", generation_model=TINY, embedding_model=None,
        cache_dir=tmp_path,
    )  # fmt: skip

    with pytest.raises(RunnerError):
        runner.run()


def test_the_embedded_agent_answers_the_reference_example_in_process(tiny_model, tiny_model_dir, client_api):
    from agents.embedded import EmbeddedAgent
    from inference import engine

    model = engine.load(engine.ModelSpec.from_catalog(tiny_model))
    agent = EmbeddedAgent(models={"generation": model}, agent_id="embedded", poll_wait=0.5, heartbeat_seconds=1)
    agent.start()
    try:
        body = {"task_data": {"model": "llama2", "prompt": "test prompt"}, "priority": "normal", "requirements": {}}
        task_id = client_api.post("/tasks/submit", body, format="json").json()["task_id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and Job.objects.get(pk=task_id).status != JobStatus.COMPLETED:
            time.sleep(0.1)
    finally:
        agent.stop()
        agent.join(timeout=10)

    task = client_api.get(f"/tasks/{task_id}").json()["task"]
    assert (task["status"], task["agent_id"]) == ("completed", "embedded")
    assert isinstance(task["result"]["text"], str)


def test_the_agent_waits_out_a_coordinator_that_restarts_instead_of_dying(monkeypatch):
    answers = iter([httpx.ConnectError("refused"), 502, 503, 200])
    requests = []

    def coordinator(request):
        requests.append(request.url.path)
        if request.url.path.endswith("/poll"):
            answer = next(answers)
            if isinstance(answer, Exception):
                raise answer
            if answer == 200:
                return httpx.Response(200, json={"tasks": [{"task_id": "t-1", "lease_token": "l", "task_data": {}}]})
            return httpx.Response(answer, text="<html>Bad Gateway</html>")
        return httpx.Response(200, json={"status": "success"})

    runner = TaskRunner(
        url="http://coordinator", api_key="k", agent_id="steady", generation_model=None, embedding_model=None,
        heartbeat_seconds=60, max_tasks=1, transport=httpx.MockTransport(coordinator),
    )  # fmt: skip
    monkeypatch.setattr(TaskRunner, "RETRY_DELAYS", (0.01, 0.01))
    monkeypatch.setattr(runner, "load_models", lambda: None)
    monkeypatch.setattr(runner, "execute", lambda task_data: {"text": "done"})

    assert runner.run() == 1
    assert requests == ["/v1/agents/register"] + ["/v1/agents/steady/poll"] * 4 + ["/v1/tasks/t-1/result"]


def test_a_report_the_coordinator_keeps_failing_ends_in_a_readable_error(monkeypatch):
    runner = TaskRunner(
        url="http://coordinator", api_key="k", agent_id="steady", generation_model=None, embedding_model=None,
        transport=httpx.MockTransport(lambda request: httpx.Response(502)),
    )  # fmt: skip
    monkeypatch.setattr(TaskRunner, "RETRY_DELAYS", (0.01, 0.01))

    with pytest.raises(RunnerError, match="502 Bad Gateway"):
        runner._request("POST", "/v1/tasks/t-1/result", json={})
