import pytest
from django.urls import reverse

from agents.models import Agent
from agents.services import tasks_assign
from jobs.models import Job, JobStatus

pytestmark = pytest.mark.django_db

SUBMIT = {"task_data": {"prompt": "hi"}, "priority": "normal"}


@pytest.mark.parametrize("model", ["agent", "task", "workflow", "execution"])
def test_changelists_open(admin_client, client_api, agent_api, register_agent, model):
    register_agent(agent_api)
    client_api.post("/tasks/submit", SUBMIT, format="json")

    assert admin_client.get(reverse(f"admin:agents_{model}_changelist")).status_code == 200


def test_staff_set_an_agents_weight(admin_client, agent_api, register_agent):
    register_agent(agent_api)
    agent = Agent.objects.get()
    url = reverse("admin:agents_agent_change", args=[agent.pk])

    response = admin_client.post(url, {"weight": "3.5"}, follow=True)

    assert response.status_code == 200
    assert Agent.objects.get().weight == 3.5


def test_banning_an_agent_hands_its_tasks_to_the_queue_and_gives_it_no_more(
    admin_client, client_api, agent_api, register_agent
):
    register_agent(agent_api)
    task_id = client_api.post("/tasks/submit", SUBMIT, format="json").json()["task_id"]
    tasks_assign()
    agent = Agent.objects.get()

    admin_client.post(
        reverse("admin:agents_agent_changelist"), {"action": "ban_agents", "_selected_action": [agent.pk]}, follow=True
    )

    assert Job.objects.get(pk=task_id).status == JobStatus.QUEUED
    assert tasks_assign() == 0
    assert agent_api.post("/agents/hermes-agent/heartbeat", {}, format="json").status_code == 403
