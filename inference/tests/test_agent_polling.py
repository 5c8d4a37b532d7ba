"""The miner agent's long polls across a coordinator restart (the coordinator is simulated)."""

import threading

import httpx
import pytest

from inference.agent import AgentError, MinerAgent

LEASED = {"job_id": "job-1", "model": "m", "payload": {"prompt": "hi"}, "lease_token": "t"}


def agent_answered(answers, **options) -> tuple[MinerAgent, list[str]]:
    """An agent whose polls get ``answers`` in turn (an exception is raised as the network's)."""
    seen = []
    answers = iter(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    agent = MinerAgent(
        url="http://coordinator", api_key="k", models=["m"], miner_id="rig", transport=httpx.MockTransport(handle)
    )
    return agent, seen


@pytest.fixture(autouse=True)
def _quick_retries(monkeypatch):
    monkeypatch.setattr(MinerAgent, "RETRY_DELAYS", (0.001, 0.002))


def test_a_poll_answered_by_a_stopping_coordinator_is_made_again_and_waits_out_its_restart():
    refused = httpx.ConnectError("connection refused")
    agent, seen = agent_answered(
        [httpx.Response(204), refused, refused, refused, refused, httpx.Response(502), httpx.Response(200, json=LEASED)]
    )
    assert agent.poll(8) == []
    assert agent.poll(8) == [LEASED]
    assert seen == ["/v1/miners/poll"] * 7


def test_a_poll_waiting_for_the_coordinator_ends_when_the_agent_stops():
    refused = httpx.ConnectError("connection refused")
    agent, _ = agent_answered(iter(lambda: refused, None))
    threading.Timer(0.2, agent.stop).start()
    assert agent.poll(8) == []


def test_other_requests_still_give_up_after_their_retries():
    refused = httpx.ConnectError("connection refused")
    agent, seen = agent_answered([refused, refused, refused])
    with pytest.raises(AgentError, match="connection refused"):
        agent.register()
    assert len(seen) == 3
