"""Which agent each strategy gives tasks to, in order."""

import pytest

from agents.models import Agent, Task
from agents.services import agent_register, task_submit, tasks_assign
from jobs.models import JobStatus
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner():
    return UserFactory(username="agent-owner")


@pytest.fixture
def client_user():
    return UserFactory(username="alice")


def submit(client_user, count=1, **task):
    for _ in range(count):
        task_submit(
            client=client_user,
            task_data={"task_type": task.get("task_type", "text-generation"), "prompt": "hi"},
            priority="normal",
            requirements=task.get("requirements"),
        )


def assigned_to() -> list[str]:
    """The agent of each task, in the order the tasks were submitted."""
    tasks = Task.objects.select_related("job__miner__agent").order_by("job__created_at", "job__rank_at")
    return [t.job.miner.agent.agent_id if t.job.status == JobStatus.RUNNING else None for t in tasks]


def register(owner, agent_id, capabilities=(), slots=4, weight=None):
    agent = agent_register(
        owner=owner, agent_id=agent_id, agent_type="worker", capabilities=list(capabilities), max_concurrent_tasks=slots
    )
    if weight is not None:
        Agent.objects.filter(pk=agent.pk).update(weight=weight)
    return agent


def test_least_connections_gives_each_task_to_the_least_busy_agent(owner, client_user, settings):
    settings.AGENT_LB_STRATEGY = "least_connections"
    register(owner, "a")
    register(owner, "b")
    register(owner, "c")
    submit(client_user, 2)
    tasks_assign()
    submit(client_user, 4)

    tasks_assign()

    assert assigned_to() == ["a", "b", "c", "a", "b", "c"]


def test_least_connections_skips_a_full_agent(owner, client_user, settings):
    settings.AGENT_LB_STRATEGY = "least_connections"
    register(owner, "a", slots=1)
    register(owner, "b", slots=3)
    submit(client_user, 4)

    assert tasks_assign() == 4

    assert assigned_to() == ["a", "b", "b", "b"]


def test_weighted_round_robin_gives_tasks_in_proportion_to_weight(owner, client_user, settings):
    settings.AGENT_LB_STRATEGY = "weighted_round_robin"
    register(owner, "heavy", slots=10, weight=2)
    register(owner, "light", slots=10, weight=1)
    submit(client_user, 6)

    tasks_assign()

    assert assigned_to() == ["heavy", "heavy", "light", "heavy", "heavy", "light"]


def test_capability_match_prefers_the_best_fit_then_the_least_loaded(owner, client_user, settings):
    settings.AGENT_LB_STRATEGY = "capability_match"
    register(owner, "generalist", capabilities=("summarize", "translate", "text-generation"))
    register(owner, "writer-1", capabilities=("text-generation",))
    register(owner, "writer-2", capabilities=("text-generation",))
    register(owner, "summarizer", capabilities=("summarize",))
    submit(client_user, 3, task_type="text-generation")
    submit(client_user, 1, task_type="summarize")
    submit(client_user, 1, task_type="text-generation", requirements={"capabilities": ["translate"]})

    tasks_assign()

    assert assigned_to() == ["writer-1", "writer-2", "writer-1", "summarizer", "generalist"]


def test_an_agent_not_active_gets_no_tasks(owner, client_user, settings):
    register(owner, "a")
    Agent.objects.update(status="busy")
    submit(client_user)

    assert tasks_assign() == 0
    assert assigned_to() == [None]
