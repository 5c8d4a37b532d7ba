"""The reference agent: joins a coordinator over HTTP with an agent key, long-polls for tasks and runs
them on the platform's engine, one at a time, reporting each result or failure under its lease.

A task's ``task_type`` says what to run: ``text-generation`` (``prompt``), ``chat`` (``messages``
or ``prompt``), ``summarize`` (``text`` or ``prompt``) on the generation model, ``embedding``
(``input`` or ``prompt``) on the embedding model; ``parameters`` (or ``params``) are the job
parameters (``max_tokens``, ``temperature``, …), which may also sit in the task data itself, as
they may in a job's payload. A task without a type is text generation.
"""

import logging
import threading
from pathlib import Path

import httpx

from catalog.payloads import PARAM_NAMES
from inference import engine
from inference.agent import RETRY_DELAYS, coordinator_client, request_retried

logger = logging.getLogger(__name__)

GENERATION_TYPES = ("text-generation", "chat", "summarize")
TASK_TYPES = (*GENERATION_TYPES, "embedding")


def run_task(models: dict, task_data: dict) -> dict:
    """Run one task's data on the engine with ``models`` (``{"generation": …, "embedding": …}``,
    loaded); its result as the engine gives it, or an ``engine.InferenceError``."""
    task_type = task_data.get("task_type") or "text-generation"
    if task_type not in TASK_TYPES:
        raise engine.InferenceError("UNSUPPORTED_TASK", f"This agent runs {', '.join(TASK_TYPES)}, not {task_type!r}.")
    role = "embedding" if task_type == "embedding" else "generation"
    model = models.get(role)
    if model is None:
        raise engine.InferenceError("UNSUPPORTED_TASK", f"This agent has no {role} model.")
    params = {name: task_data[name] for name in PARAM_NAMES if name in task_data}
    params |= task_data.get("parameters") or task_data.get("params") or {}
    if task_type == "embedding":
        payload = {"input": task_data.get("input", task_data.get("prompt"))}
    elif task_type == "summarize":
        text = task_data.get("text", task_data.get("prompt", ""))
        payload = {"prompt": f"Summarize in a few sentences:\n\n{text}\n\nSummary:", "params": params}
    elif task_type == "chat" and task_data.get("messages"):
        payload = {"messages": task_data["messages"], "params": params}
    else:
        payload = {"prompt": task_data.get("prompt", ""), "params": params}
    (answer,) = engine.execute(model, [("task", payload)])
    if answer.error is not None:
        raise answer.error
    return answer.result


def capabilities_of(models: dict) -> list[str]:
    """The task types an agent with ``models`` runs."""
    return (list(GENERATION_TYPES) if "generation" in models else []) + (["embedding"] if "embedding" in models else [])


class RunnerError(Exception):
    """The agent cannot start (a model unknown to the coordinator, a refused key…)."""


class TaskRunner:
    RETRY_DELAYS = RETRY_DELAYS

    def __init__(
        self,
        *,
        url: str,
        api_key: str,
        agent_id: str,
        generation_model: str | None = "smollm2-135m",
        embedding_model: str | None = "minilm-l6",
        poll_wait: float = 15,
        heartbeat_seconds: float = 20,
        cache_dir: Path | None = None,
        device: str | None = None,
        max_tasks: int | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        self.agent_id = agent_id
        self.model_names = {"generation": generation_model, "embedding": embedding_model}
        self.poll_wait = poll_wait
        self.heartbeat_seconds = heartbeat_seconds
        self.cache_dir = cache_dir
        self.device = device
        self.max_tasks = max_tasks
        self.http = coordinator_client(url, api_key, poll_wait=poll_wait, transport=transport)
        self.models: dict[str, engine.LoadedModel] = {}
        self.tasks_done = 0
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> int:
        """Serve until stopped (or ``max_tasks`` were answered); returns how many tasks it answered."""
        self.load_models()
        self.register()
        beat = threading.Thread(target=self._beat, name="agent-heartbeat", daemon=True)
        beat.start()
        try:
            while not self._stop.is_set() and (self.max_tasks is None or self.tasks_done < self.max_tasks):
                response = self._request(
                    "POST",
                    f"/v1/agents/{self.agent_id}/poll",
                    json={"max_wait_seconds": self.poll_wait},
                    until_stopped=True,
                )
                if response is None or response.status_code == 204:
                    continue
                for task in response.json()["tasks"]:
                    self.answer(task)
        finally:
            self._stop.set()
            beat.join(timeout=5)
            self.http.close()
        return self.tasks_done

    def load_models(self) -> None:
        listed = {entry["id"]: entry for entry in self._request("GET", "/v1/models").json()["data"]}
        for role, name in self.model_names.items():
            if not name:
                continue
            if name not in listed:
                raise RunnerError(f"Not in the coordinator's catalog: {name}. It offers: {', '.join(listed)}.")
            spec = engine.ModelSpec.from_dict({**listed[name], "name": name})
            self.models[role] = engine.load(spec, cache_dir=self.cache_dir, device=self.device)

    def capabilities(self) -> list[str]:
        return capabilities_of(self.models)

    def register(self) -> None:
        body = {
            "agent_id": self.agent_id,
            "agent_type": "worker",
            "capabilities": self.capabilities(),
            "services": ["task-execution"],
            "metadata": {"runner": "aitbc-runagent", "models": {k: m.spec.name for k, m in self.models.items()}},
            "max_concurrent_tasks": 1,
        }
        self._request("POST", "/v1/agents/register", json=body)

    def answer(self, task: dict) -> None:
        task_id, lease = task["task_id"], task["lease_token"]
        try:
            result = self.execute(task["task_data"])
        except engine.InferenceError as error:
            body = {"agent_id": self.agent_id, "error": f"{error.code}: {error.message}", "lease_token": lease}
            self._request("POST", f"/v1/tasks/{task_id}/fail", json=body, allow_conflict=True)
            logger.info("task %s failed (%s)", task_id, error.code)
        else:
            body = {"agent_id": self.agent_id, "result": result, "lease_token": lease}
            self._request("POST", f"/v1/tasks/{task_id}/result", json=body, allow_conflict=True)
            logger.info("task %s answered", task_id)
        self.tasks_done += 1

    def execute(self, task_data: dict) -> dict:
        """Run one task's data on the engine; its result as the engine gives it."""
        return run_task(self.models, task_data)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                self._request("POST", f"/v1/agents/{self.agent_id}/heartbeat", json={})
            except (httpx.HTTPError, RunnerError):
                logger.warning("heartbeat failed; trying again")

    def _request(
        self, method: str, path: str, *, allow_conflict: bool = False, until_stopped: bool = False, **kwargs
    ) -> httpx.Response | None:
        """``inference.agent.request_retried``, failing with a ``RunnerError``; then a refused key is
        fatal, as is another 4xx but a 409 where ``allow_conflict``."""
        response = request_retried(
            self.http,
            method,
            path,
            stop=self._stop,
            delays=self.RETRY_DELAYS,
            until_stopped=until_stopped,
            error=RunnerError,
            **kwargs,
        )
        return None if response is None else self._checked(response, allow_conflict=allow_conflict)

    def _checked(self, response: httpx.Response, *, allow_conflict: bool) -> httpx.Response:
        if response.status_code in (401, 403):
            raise RunnerError(f"The coordinator refused the key ({response.status_code}): {response.text}")
        if response.status_code == 409 and allow_conflict:
            logger.warning("the coordinator refused a report (the task went elsewhere): %s", response.text)
            return response
        response.raise_for_status()
        return response
