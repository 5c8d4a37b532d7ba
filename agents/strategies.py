"""How a task goes to one of the agents that fit it: ``AGENT_LB_STRATEGY`` names the strategy.

- ``least_connections``: the agent running the fewest tasks now (then the one given fewest so far);
- ``weighted_round_robin``: the agent whose tasks so far, divided by its weight, are fewest, so
  that over time each agent gets its weight's share (an agent of weight 2 gets two for one);
- ``capability_match``: the best fit (most of the task's wanted capabilities, its type among them,
  then fewest it does not need), then the least loaded.

Ties go to the agent id first in order, so an assignment is the same however often it is worked out.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from agents.models import Agent, Task


@dataclass(eq=False)
class Candidate:
    """An agent that may be given tasks: how many it runs now, and how many it may run at once."""

    agent: Agent
    running: int
    capacity: int

    @cached_property
    def offered(self) -> frozenset[str]:
        return frozenset(self.agent.capabilities)


def fits(agent: Agent, task: Task) -> bool:
    """Whether ``agent`` meets the task's requirements (its type, its capabilities) and may take it (a
    task pinned to one agent's miner goes to that agent alone)."""
    if task.job.req_miner_id is not None and task.job.req_miner_id != agent.miner_id:
        return False
    if task.required_agent_type and agent.agent_type != task.required_agent_type:
        return False
    return set(task.required_capabilities) <= set(agent.capabilities)


def least_connections(candidates: list[Candidate], task: Task) -> Candidate:
    return min(candidates, key=lambda c: (c.running, c.agent.assignments, c.agent.agent_id))


def weighted_round_robin(candidates: list[Candidate], task: Task) -> Candidate:
    return min(candidates, key=lambda c: ((c.agent.assignments + 1) / c.agent.weight, c.agent.agent_id))


def capability_match(candidates: list[Candidate], task: Task) -> Candidate:
    wanted = set(task.required_capabilities) | ({task.task_type} if task.task_type else set())

    def fit(candidate: Candidate):
        offered = candidate.offered
        return (-len(wanted & offered), len(offered - wanted), candidate.running, candidate.agent.agent_id)

    return min(candidates, key=fit)


STRATEGIES: dict[str, Callable[[list[Candidate], Task], Candidate]] = {
    "least_connections": least_connections,
    "weighted_round_robin": weighted_round_robin,
    "capability_match": capability_match,
}
