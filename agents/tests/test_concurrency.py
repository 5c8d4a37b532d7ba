"""Assignment under real concurrency (PostgreSQL): many agents polling, heartbeating and finishing at once."""

import threading

import pytest
from django.db import connection

from agents import services
from agents.models import Agent, Task
from jobs.models import Job, JobStatus
from tests.factories import UserFactory

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
    errors = []
    start = threading.Barrier(len(agents))

    def work(agent: Agent):
        try:
            start.wait()
            for _ in range(40):
                services.agent_heartbeat(agent=agent)
                for task in services.agent_poll(agent=agent, limit=3, wait_seconds=0):
                    received[agent.agent_id].append(task.job_id)
                    services.task_complete(
                        agent=agent, task_id=task.job_id, result="done", lease_token=task.job.lease_token
                    )
        except Exception as error:  # reported below: a thread's failure must fail the test
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(agent,)) for agent in agents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    delivered = [job_id for ids in received.values() for job_id in ids]
    assert len(delivered) == len(set(delivered)) == 60
    assert Job.objects.filter(status=JobStatus.COMPLETED).count() == 60
    assert sum(Agent.objects.values_list("tasks_completed", flat=True)) == 60
    assert set(Task.objects.values_list("delivered_attempt", flat=True)) == {1}
