"""The platform's own agent, in-process: where the embedded server runs the engine itself
(``AGENT_EMBEDDED``, on by default in the embedded setup), an agent runs beside the in-cluster
inference host, with its models, and takes tasks through the services as any agent does over HTTP:
registered (owned by ``INFERENCE_OWNER_USERNAME``), heartbeating, long-polling, reporting each
result under its lease. So a task submitted to a freshly started server is answered.
"""

import logging
import threading
import time
from functools import partial

from django.conf import settings
from django.db import connection

from accounts.services import user_get_or_create
from agents import services
from agents.runner import capabilities_of, run_task
from core.errors import ServiceError
from inference import engine

logger = logging.getLogger(__name__)


def models_by_role(loaded: dict) -> dict:
    """A host's loaded models (by name) as a runner's roles: its first generation and embedding model."""
    roles = {}
    for model in loaded.values():
        role = "embedding" if model.spec.task == "embedding" else "generation"
        roles.setdefault(role, model)
    return roles


class EmbeddedAgent(threading.Thread):
    def __init__(self, *, models: dict, agent_id: str, poll_wait: float = 15, heartbeat_seconds: float = 20):
        super().__init__(name="embedded-agent", daemon=True)
        self.models = models
        self.agent_id = agent_id
        self.poll_wait = poll_wait
        self.heartbeat_seconds = heartbeat_seconds
        self.tasks_done = 0
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        try:
            owner = user_get_or_create(username=settings.INFERENCE_OWNER_USERNAME)
            agent = services.agent_register(
                owner=owner,
                agent_id=self.agent_id,
                agent_type="worker",
                capabilities=capabilities_of(self.models),
                services=["task-execution"],
                metadata={"runner": "embedded", "models": {k: m.spec.name for k, m in self.models.items()}},
                max_concurrent_tasks=1,
            )
            beaten = time.monotonic()
            while not self._stop_event.is_set():
                if time.monotonic() - beaten >= self.heartbeat_seconds:
                    services.agent_heartbeat(agent=agent)
                    beaten = time.monotonic()
                for task in services.agent_poll(agent=agent, limit=1, wait_seconds=self.poll_wait):
                    self._answer(agent, task)
        except Exception:
            logger.exception("the embedded agent stopped")
        finally:
            connection.close()

    def _answer(self, agent, task) -> None:
        lease = {"agent": agent, "task_id": task.job_id, "lease_token": task.job.lease_token}
        try:
            result = run_task(self.models, task.job.payload)
        except engine.InferenceError as error:
            report = partial(services.task_fail, error=f"{error.code}: {error.message}")
        else:
            report = partial(services.task_complete, result=result)
        try:
            report(**lease)
        except ServiceError as error:  # the task went elsewhere meanwhile
            logger.warning("the embedded agent's report on task %s was refused: %s", task.job_id, error.detail)
        self.tasks_done += 1


_agent: EmbeddedAgent | None = None
_agent_lock = threading.Lock()


def start_agent(loaded: dict) -> EmbeddedAgent | None:
    """Start this process's embedded agent (once) with the host's ``loaded`` models."""
    global _agent
    with _agent_lock:
        models = models_by_role(loaded)
        if _agent is not None or not models:
            return _agent
        _agent = EmbeddedAgent(models=models, agent_id=settings.AGENT_EMBEDDED_ID)
        _agent.start()
        return _agent


def stop_agent() -> None:
    global _agent
    with _agent_lock:
        agent, _agent = _agent, None
    if agent is not None:
        agent.stop()
