import pytest

from swarm.models import SwarmTask
from swarm.services import task_advance

MODEL = "llama3.2"


class FakeMiner:
    """A miner that answers through the real HTTP miner API: it polls, then posts what it is told."""

    def __init__(self, api, miner_id: str):
        self.api, self.miner_id = api, miner_id

    def join(self, swarm_id=None, role="task-coordinator", **extra) -> dict:
        body = {"role": role, "capability": "text-generation", **extra}
        if swarm_id is not None:
            body["swarm_id"] = str(swarm_id)
        response = self.api.post("/v1/swarm/join", body, format="json")
        assert response.status_code == 201, response.content
        return response.json()

    def poll(self) -> dict | None:
        response = self.api.post("/v1/miners/poll", {}, format="json")
        assert response.status_code in (200, 204), response.content
        return response.json() if response.status_code == 200 else None

    def answer(self, text: str) -> dict:
        """Take the job waiting for this miner and answer ``text``; returns the job as polled."""
        job = self.poll()
        assert job is not None, f"{self.miner_id} found no job"
        prompt = job["payload"].get("prompt")
        result = {"text": text(prompt) if callable(text) else text, "finish_reason": "stop"}
        response = self.api.post(
            f"/v1/miners/{job['job_id']}/result",
            {"result": result, "metrics": {"completion_tokens": 3}, "lease_token": job["lease_token"]},
            format="json",
        )
        assert response.status_code == 200, response.content
        return job


@pytest.fixture
def fake_miner(make_api, register_miner):
    """``fake_miner(miner_id, owner=…)`` → a registered miner serving ``MODEL`` (its own owner unless told)."""

    def make(miner_id: str, owner: str | None = None) -> FakeMiner:
        api = make_api("miner", owner or f"owner-of-{miner_id}", miner_id=miner_id)
        register_miner(api, models=(MODEL,))
        return FakeMiner(api, miner_id)

    return make


@pytest.fixture
def swarm_of(fake_miner):
    """``swarm_of(n)`` → (swarm_id, [n fake miners of distinct owners, all members])."""

    def make(n: int) -> tuple[str, list[FakeMiner]]:
        miners = [fake_miner(f"member-{i}") for i in range(n)]
        swarm_id = miners[0].join()["swarm_id"]
        for miner in miners[1:]:
            miner.join(swarm_id)
        return swarm_id, miners

    return make


def advanced(task_id) -> SwarmTask:
    task_advance(task_id=task_id)
    return SwarmTask.objects.get(pk=task_id)
