"""Reading agents and tasks: discovery, health, a task's state, the queues and their figures."""

from datetime import datetime

from django.conf import settings
from django.db.models import Avg, Count, F, Q, Sum
from django.utils import timezone

from agents.models import Agent, AgentStatus, Execution, StepStatus, Task, Workflow
from core.api.formats import iso_datetime, money_text
from core.errors import NotFound
from jobs.models import Job, JobPriority, JobStatus, JobType


def effective_status(agent: Agent, *, now: datetime | None = None) -> str:
    """The agent's status as stored, except that an agent silent past the timeout reads as stale
    before housekeeping stores it."""
    now = now or timezone.now()
    if (now - agent.last_heartbeat_at).total_seconds() > settings.AGENT_HEARTBEAT_TIMEOUT_SECONDS:
        return AgentStatus.STALE
    return agent.status


def health_score(agent: Agent, *, now: datetime | None = None) -> float:
    """0 to 1: half how fresh its last heartbeat is (1 just now, 0 at the stale timeout), half the
    share of its attempts it completed (1 before it ended any)."""
    now = now or timezone.now()
    if effective_status(agent, now=now) == AgentStatus.STALE:
        freshness = 0.0
    else:
        age = (now - agent.last_heartbeat_at).total_seconds()
        freshness = max(0.0, 1 - age / settings.AGENT_HEARTBEAT_TIMEOUT_SECONDS)
    ended = agent.tasks_completed + agent.tasks_failed
    success = agent.tasks_completed / ended if ended else 1.0
    return round(0.5 * freshness + 0.5 * success, 4)


def agent_get(*, agent_id: str) -> Agent:
    agent = Agent.objects.select_related("miner").filter(agent_id=agent_id).first()
    if agent is None:
        raise NotFound("Agent not found", code="AGENT_NOT_FOUND")
    return agent


def agent_for_owner(*, owner, agent_id: str, any_owner: bool = False) -> Agent:
    """The caller's agent ``agent_id`` (anyone's for admin keys); another's is not found."""
    agent = agent_get(agent_id=agent_id)
    if agent.owner_id != owner.pk and not any_owner:
        raise NotFound("Agent not found", code="AGENT_NOT_FOUND")
    return agent


def agents_discover(
    *, status: str | None = None, agent_type: str | None = None, capabilities=(), services=()
) -> list[Agent]:
    """Agents with that status and type, offering every capability and service asked for."""
    agents = Agent.objects.select_related("miner").order_by("agent_id")
    if agent_type:
        agents = agents.filter(agent_type=agent_type)
    now = timezone.now()
    found = []
    for agent in agents:
        if status and effective_status(agent, now=now) != status:
            continue
        if not set(capabilities) <= set(agent.capabilities) or not set(services) <= set(agent.services):
            continue
        found.append(agent)
    return found


def running_tasks(agent: Agent) -> int:
    return Job.objects.filter(miner=agent.miner_id, status=JobStatus.RUNNING).count()


def task_state(task: Task) -> str:
    """The task's job status, with a running task not yet received by its agent as ``assigned``."""
    job = task.job
    if job.status == JobStatus.RUNNING and task.delivered_attempt < job.attempt:
        return "assigned"
    return job.status


def task_for_caller(*, task_id, user, is_admin: bool) -> Task:
    """A task its submitter (or staff) may read; anyone else's is not found."""
    task = Task.objects.select_related("job", "job__payment", "job__miner__agent").filter(pk=task_id).first()
    if task is None or (task.job.client_id != user.pk and not is_admin):
        raise NotFound("Task not found.", code="TASK_NOT_FOUND")
    return task


def queue_sizes() -> dict[str, int]:
    """Tasks waiting for an agent, by priority, most urgent first."""
    counts = dict(
        Job.objects.filter(type=JobType.TASK, status=JobStatus.QUEUED)
        .values_list("priority")
        .annotate(n=Count("pk"))
        .order_by()
    )
    return {priority.label: counts.get(priority.value, 0) for priority in reversed(JobPriority)}


def distribution_stats() -> dict:
    """The reference's task figures: distributed, completed, failed, the mean time from submission to
    the latest assignment, and the load balancer's."""
    tasks = Job.objects.filter(type=JobType.TASK)
    by_status = dict(tasks.values_list("status").annotate(n=Count("pk")).order_by())
    distributed = tasks.filter(attempt__gt=0).count()
    waited = tasks.filter(started_at__isnull=False).aggregate(mean=Avg(F("started_at") - F("created_at")))["mean"]
    agents = Agent.objects.aggregate(total=Sum("assignments"), count=Count("pk"))
    active = list(
        Agent.objects.filter(status=AgentStatus.ACTIVE, banned_at__isnull=True).values_list("miner", flat=True)
    )
    running = Job.objects.filter(miner__in=active, status=JobStatus.RUNNING).count()
    total_assignments = agents["total"] or 0
    completed = by_status.get(JobStatus.COMPLETED, 0)
    failed_attempts = Agent.objects.aggregate(failed=Sum("tasks_failed"))["failed"] or 0
    return {
        "tasks_distributed": distributed,
        "tasks_completed": completed,
        "tasks_failed": by_status.get(JobStatus.FAILED, 0),
        "avg_distribution_time": round(waited.total_seconds(), 6) if waited is not None else 0.0,
        "load_balancer_stats": {
            "strategy": settings.AGENT_LB_STRATEGY,
            "total_assignments": total_assignments,
            "successful_assignments": completed,
            "failed_assignments": failed_attempts,
            "success_rate": round(completed / total_assignments, 4) if total_assignments else 0.0,
            "active_agents": len(active),
            "agent_weights": agents["count"],
            "avg_agent_load": round(running / len(active), 4) if active else 0,
        },
        "queue_sizes": queue_sizes(),
    }


def workflows_visible_to(*, user, is_admin: bool):
    """The caller's workflows and the public ones (all of them for staff), newest first."""
    workflows = Workflow.objects.order_by("-created_at")
    return workflows if is_admin else workflows.filter(Q(owner=user) | Q(is_public=True))


def workflow_for(*, user, workflow_id, is_admin: bool, to_change: bool = False) -> Workflow:
    """A workflow the caller may read (its own or a public one), or change (its own); else not found."""
    workflow = Workflow.objects.filter(pk=workflow_id).first()
    if workflow is None or not (is_admin or workflow.owner_id == user.pk or (workflow.is_public and not to_change)):
        raise NotFound("Workflow not found.", code="WORKFLOW_NOT_FOUND")
    return workflow


def executions_visible_to(*, user, is_admin: bool):
    executions = Execution.objects.order_by("-started_at")
    return executions if is_admin else executions.filter(client=user)


def execution_for(*, user, execution_id, is_admin: bool) -> Execution:
    execution = executions_visible_to(user=user, is_admin=is_admin).filter(pk=execution_id).first()
    if execution is None:
        raise NotFound("Execution not found.", code="EXECUTION_NOT_FOUND")
    return execution


def execution_view(execution: Execution) -> dict:
    """An execution's state as the API and pages show it."""
    rows = list(execution.step_rows.order_by("started_at", "step_id"))
    running = [row.step_id for row in rows if row.status == StepStatus.RUNNING]
    proof = execution.receipt["receipt"] if execution.receipt else None
    return {
        "execution_id": str(execution.pk),
        "workflow_id": str(execution.workflow_id) if execution.workflow_id else None,
        "status": execution.status,
        "current_step": running[0] if running else None,
        "running_steps": running,
        "total_steps": len(rows),
        "completed_steps": sum(row.status == StepStatus.COMPLETED for row in rows),
        "step_states": {
            row.step_id: {
                "status": row.status,
                "job_id": str(row.job_id) if row.job_id else None,
                "attempts": row.attempts,
                "output": row.output,
                "error": row.error or None,
                "cost": money_text(row.cost),
                "started_at": iso_datetime(row.started_at),
                "finished_at": iso_datetime(row.finished_at),
            }
            for row in sorted(rows, key=lambda r: r.step_id)
        },
        "inputs": execution.inputs,
        "final_result": execution.final_result,
        "total_cost": money_text(execution.total_cost),
        "budget": money_text(execution.budget),
        "error": execution.error or None,
        "verification_proof": proof,
        "started_at": iso_datetime(execution.started_at),
        "deadline": iso_datetime(execution.deadline),
        "completed_at": iso_datetime(execution.completed_at),
    }
