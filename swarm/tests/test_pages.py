"""The swarms' pages and admin: members with their live status, a task's shares followed live."""

import pytest
from django.contrib.auth import get_user_model

from core.models import StaffAction
from swarm.models import SwarmTask
from swarm.tests.conftest import MODEL

pytestmark = pytest.mark.django_db


@pytest.fixture
def started(client_api, swarm_of):
    swarm_id, miners = swarm_of(3)
    body = {"swarm_id": swarm_id, "task": {"prompt": "hi", "model": MODEL}, "strategy": "redundant"}
    response = client_api.post("/v1/swarm/coordinate", body, format="json")
    assert response.status_code == 202, response.content
    return swarm_id, response.json()["task_id"], miners


def test_the_swarms_page_lists_swarms_and_my_tasks(client, client_api, started):
    swarm_id, task_id, _ = started
    client.force_login(client_api.user)
    page = client.get("/swarms/").content.decode()
    assert swarm_id[:10] in page and "member-0" in page and "(online)" in page
    assert f"/swarms/tasks/{task_id}/" in page


def test_a_swarms_page_shows_its_members_and_my_tasks_on_it(client, client_api, started):
    swarm_id, task_id, _ = started
    client.force_login(client_api.user)
    page = client.get(f"/swarms/{swarm_id}/").content.decode()
    assert "member-2" in page and "task-coordinator" in page and "online" in page
    assert f"/swarms/tasks/{task_id}/" in page
    assert client.get("/swarms/00000000-0000-0000-0000-000000000000/").status_code == 404


def test_a_task_page_follows_its_running_shares_over_their_job_sockets(client, client_api, started):
    _, task_id, _ = started
    client.force_login(client_api.user)
    page = client.get(f"/swarms/tasks/{task_id}/").content.decode()
    assert "swarm/task.js" in page and "live.js" in page
    for job_id in SwarmTask.objects.get(pk=task_id).shares.values_list("job_id", flat=True):
        assert f'data-job-status="{job_id}"' in page and str(job_id) in page
    assert 'http-equiv="refresh"' not in page


def test_a_task_page_is_its_clients_alone(client, started):
    _, task_id, _ = started
    client.force_login(get_user_model().objects.create(username="mallory"))
    assert client.get(f"/swarms/tasks/{task_id}/").status_code == 404


def test_staff_see_swarms_and_tasks_in_the_admin_and_cancel_tasks(admin_client, started):
    swarm_id, task_id, _ = started
    assert "member-1" in admin_client.get(f"/admin/swarm/swarm/{swarm_id}/change/").content.decode()
    assert task_id in admin_client.get("/admin/swarm/swarmtask/").content.decode()
    assert "pending" in admin_client.get(f"/admin/swarm/swarmtask/{task_id}/change/").content.decode()
    chosen = {"action": "cancel_tasks", "_selected_action": [task_id]}
    confirm = admin_client.post("/admin/swarm/swarmtask/", chosen).content.decode()
    assert "Cancel swarm tasks and refund their running shares" in confirm
    assert SwarmTask.objects.get(pk=task_id).status == "running"
    response = admin_client.post("/admin/swarm/swarmtask/", {**chosen, "apply": "1", "reason": "stuck"}, follow=True)
    assert "Cancelled 1 swarm task(s)." in response.content.decode()
    assert SwarmTask.objects.get(pk=task_id).status == "cancelled"
    action = StaffAction.objects.get()
    assert (action.action, action.reason) == ("cancel swarm tasks", "stuck")
