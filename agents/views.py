"""The agents' pages: the registry and my tasks and workflows; a workflow's DAG; an execution's steps."""

import json

from django.contrib.auth.mixins import LoginRequiredMixin
from django.http import Http404
from django.views.generic import TemplateView

from agents import dag, selectors
from agents.models import Agent, ExecutionStatus, Task
from core.errors import NotFound

NODE_WIDTH, NODE_HEIGHT, COLUMN, ROW = 150, 40, 200, 64


class AgentsPageView(LoginRequiredMixin, TemplateView):
    template_name = "agents/agents.html"

    def get_context_data(self, **kwargs):
        agents = list(Agent.objects.select_related("miner").order_by("agent_id")[:200])
        for agent in agents:
            agent.shown_status = selectors.effective_status(agent)
            agent.health = selectors.health_score(agent)
        tasks = list(
            Task.objects.select_related("job", "job__miner__agent")
            .filter(job__client=self.request.user)
            .order_by("-job__created_at")[:50]
        )
        for task in tasks:
            task.state = selectors.task_state(task)
        user = self.request.user
        return {
            **super().get_context_data(**kwargs),
            "agents": agents,
            "tasks": tasks,
            "workflows": selectors.workflows_visible_to(user=user, is_admin=False)[:50],
            "executions": selectors.executions_visible_to(user=user, is_admin=False).select_related("workflow")[:20],
        }


def dag_picture(steps: dict, dependencies: dict, states: dict | None = None) -> dict:
    """Boxes and arrows for an SVG: each step in the column of its longest chain of dependencies."""
    depth: dict[str, int] = {}
    for step_id in dag.topological_order(steps, dependencies):
        depth[step_id] = max((depth[d] + 1 for d in dependencies.get(step_id, [])), default=0)
    columns: dict[int, list[str]] = {}
    for step_id in sorted(steps):
        columns.setdefault(depth[step_id], []).append(step_id)
    boxes = {}
    for column, step_ids in columns.items():
        for row, step_id in enumerate(step_ids):
            boxes[step_id] = {
                "id": step_id,
                "x": 10 + column * COLUMN,
                "y": 10 + row * ROW,
                "kind": dag.step_type(steps[step_id]),
                "status": (states or {}).get(step_id, ""),
            }
    edges = [
        {
            "x1": boxes[d]["x"] + NODE_WIDTH,
            "y1": boxes[d]["y"] + NODE_HEIGHT // 2,
            "x2": boxes[step_id]["x"],
            "y2": boxes[step_id]["y"] + NODE_HEIGHT // 2,
        }
        for step_id, waits_for in dependencies.items()
        for d in waits_for
    ]
    width = 20 + (max(columns) + 1) * COLUMN
    height = 20 + max(len(ids) for ids in columns.values()) * ROW
    return {
        "boxes": list(boxes.values()),
        "edges": edges,
        "width": width,
        "height": height,
        "node_width": NODE_WIDTH,
        "node_height": NODE_HEIGHT,
    }


class WorkflowPageView(LoginRequiredMixin, TemplateView):
    template_name = "agents/workflow.html"

    def get_context_data(self, workflow_id, **kwargs):
        try:
            workflow = selectors.workflow_for(user=self.request.user, workflow_id=workflow_id, is_admin=False)
        except NotFound:
            raise Http404("No such workflow.") from None
        executions = selectors.executions_visible_to(user=self.request.user, is_admin=False).filter(workflow=workflow)
        return {
            **super().get_context_data(**kwargs),
            "workflow": workflow,
            "picture": dag_picture(workflow.steps, workflow.dependencies or {}),
            "steps_pretty": json.dumps({"steps": workflow.steps, "dependencies": workflow.dependencies}, indent=2),
            "executions": executions[:20],
        }


class ExecutionPageView(LoginRequiredMixin, TemplateView):
    template_name = "agents/execution.html"

    def get_context_data(self, execution_id, **kwargs):
        try:
            execution = selectors.execution_for(user=self.request.user, execution_id=execution_id, is_admin=False)
        except NotFound:
            raise Http404("No such execution.") from None
        view = selectors.execution_view(execution)
        states = {step_id: state["status"] for step_id, state in view["step_states"].items()}
        return {
            **super().get_context_data(**kwargs),
            "execution": view,
            "picture": dag_picture(execution.steps, execution.dependencies or {}, states),
            "events": execution.events.all(),
            "live": execution.status == ExecutionStatus.RUNNING,
            "receipt_pretty": json.dumps(execution.receipt, indent=2, sort_keys=True) if execution.receipt else "",
        }
