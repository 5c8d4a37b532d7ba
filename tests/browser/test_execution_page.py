"""In a real browser: an execution's page follows its steps over its socket, without reloading."""

import re

import pytest
from playwright.sync_api import expect

from agents import services

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

PASSWORD = "correct-horse-battery-staple"


def test_an_executions_page_shows_its_steps_change_without_reloading(page, log_in, make_api):
    client = make_api("client", "dora").user
    client.set_password(PASSWORD)
    client.save(update_fields=["password"])
    agent = services.agent_register(owner=make_api("agent", "helper-owner").user, agent_id="helper", agent_type="w")
    steps = {"first": {"type": "task", "task_data": {"q": "1"}}, "second": {"type": "task", "task_data": {"q": "2"}}}
    workflow = services.workflow_create(owner=client, name="chain", steps=steps, dependencies={"second": ["first"]})
    execution = services.workflow_execute(workflow=workflow, client=client, inputs={})
    log_in(page, "dora", PASSWORD)
    page.goto(f"/executions/{execution.pk}/")
    page.evaluate("window.__notReloaded = true")
    expect(page.locator('tr[data-step="first"] .step-status')).to_have_text("running")

    (task,) = services.agent_poll(agent=agent, limit=1)  # the agent takes the first step and finishes it
    services.task_complete(agent=agent, task_id=task.job_id, result="one", lease_token=task.job.lease_token)

    expect(page.locator('tr[data-step="first"] .step-status')).to_have_text("completed")
    expect(page.locator('tr[data-step="first"] .step-output')).to_have_text("one")
    expect(page.locator('tr[data-step="second"] .step-status')).to_have_text("running")
    expect(page.locator('g.dag-step[data-step="first"] .dag-state')).to_have_text(re.compile("completed$"))
    expect(page.locator("#execution-done")).to_have_text("1")
    assert page.evaluate("window.__notReloaded") is True, "the page reloaded"
