"""Assignment under real concurrency (PostgreSQL): many agents polling, heartbeating and finishing at once."""

from functools import partial

import pytest

from agents import services
from agents.models import Agent, Task
from jobs.models import Job, JobStatus
from tests.factories import UserFactory
from tests.threads import run_at_once

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_concurrent_polls_deliver_each_task_once_and_complete_all(settings):
    owner, client = UserFactory(username="owners"), UserFactory(username="clients")
    agents = [
        services.agent_register(owner=owner, agent_id=f"a{n}", agent_type="worker", max_concurrent_tasks=3)
        for n in range(6)
    ]
    for _ in range(60):
        services.task_submit(client=client, task_data={"prompt": "x"}, priority="normal")
    received: dict[str, list] = {agent.agent_id: [] for agent in agents}

    def work(agent: Agent):
        for _ in range(40):
            services.agent_heartbeat(agent=agent)
            for task in services.agent_poll(agent=agent, limit=3, wait_seconds=0):
                received[agent.agent_id].append(task.job_id)
                services.task_complete(
                    agent=agent, task_id=task.job_id, result="done", lease_token=task.job.lease_token
                )

    assert run_at_once([partial(work, agent) for agent in agents]) == []
    delivered = [job_id for ids in received.values() for job_id in ids]
    assert len(delivered) == len(set(delivered)) == 60
    assert Job.objects.filter(status=JobStatus.COMPLETED).count() == 60
    assert sum(Agent.objects.values_list("tasks_completed", flat=True)) == 60
    assert set(Task.objects.values_list("delivered_attempt", flat=True)) == {1}
