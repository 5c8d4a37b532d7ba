import pytest

from agents.services import agent_register, task_submit, workflow_create, workflow_execute
from catalog.models import CatalogModel
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

STEPS = {
    "facts": {"type": "chat", "model": "page-model", "prompt": "Facts about {{inputs.topic}}"},
    "poem": {"type": "chat", "model": "page-model", "prompt": "A poem about {{inputs.topic}}"},
    "merge": {"type": "chat", "model": "page-model", "prompt": "{{steps.facts.output}} {{steps.poem.output}}"},
}


@pytest.fixture
def signed_in(client):
    user = UserFactory(username="alice")
    client.force_login(user)
    CatalogModel.objects.create(name="page-model", task="chat", source_kind="hub", source="example/page")
    return client, user


def test_agents_page_lists_the_registry_and_my_tasks(signed_in):
    client, user = signed_in
    agent_register(owner=UserFactory(username="runner"), agent_id="hermes-agent", agent_type="worker")
    task_submit(client=user, task_data={"task_type": "summarize", "text": "x"}, priority="high")

    page = client.get("/agents/").content.decode()

    assert "hermes-agent" in page
    assert "summarize" in page and "high" in page


def test_workflow_page_draws_the_dag_and_execution_page_its_steps(signed_in):
    client, user = signed_in
    workflow = workflow_create(owner=user, name="brief", steps=STEPS, dependencies={"merge": ["facts", "poem"]})
    execution = workflow_execute(workflow=workflow, client=user, inputs={"topic": "Paris"})

    drawn = client.get(f"/workflows/{workflow.pk}/").content.decode()
    followed = client.get(f"/executions/{execution.pk}/").content.decode()

    assert drawn.count("<rect") == 3 and drawn.count("<line") == 2
    assert ">merge<" in drawn
    assert "waiting" in followed and "started" in followed
    # Followed over its socket while it runs, not reloaded.
    assert f'data-socket="/ws/executions/{execution.pk}/"' in followed and "agents/execution.js" in followed
    assert 'http-equiv="refresh"' not in followed


def test_someone_elses_execution_is_not_found(signed_in):
    client, _ = signed_in
    other = UserFactory(username="bob")
    workflow = workflow_create(owner=other, name="private", steps={"a": STEPS["facts"]})
    execution = workflow_execute(workflow=workflow, client=other, inputs={"topic": "x"})

    assert client.get(f"/executions/{execution.pk}/").status_code == 404
    assert client.get(f"/workflows/{workflow.pk}/").status_code == 404
