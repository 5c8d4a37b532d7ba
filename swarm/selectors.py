"""Reading swarms and their tasks: who is in them and how they are, a task's progress and consensus."""

from django.db.models import Count, Prefetch, Q, QuerySet

from core.errors import NotFound
from jobs.models import Job, JobStatus
from jobs.selectors import miners_able_to_run
from miners.models import Miner, MinerStatus
from swarm import outputs
from swarm.models import ShareOutcome, Swarm, SwarmMember, SwarmShare, SwarmTask, TaskStatus


def member_status(miner: Miner) -> str:
    """A member's live status, from its miner's: banned, suspended, maintenance, draining, online or
    offline (the miner's heartbeats keep it online; housekeeping takes a silent one offline)."""
    if miner.banned_at:
        return "banned"
    if miner.suspended_at:
        return "suspended"
    if miner.maintenance_since:
        return "maintenance"
    if miner.status == MinerStatus.ONLINE:
        return "draining" if miner.draining else "online"
    return "offline"


def current_members() -> Prefetch:
    return Prefetch(
        "members",
        queryset=SwarmMember.objects.filter(left_at__isnull=True).select_related("miner", "agent"),
        to_attr="current_members",
    )


def swarms_listed(*, swarm_id=None, status: str | None = None) -> QuerySet[Swarm]:
    """Swarms, newest first, with their current members (``current_members``) and their running
    tasks counted (``running_tasks``). Every signed-in caller sees every swarm: a swarm offers its
    members' work to any client, as miners do. ``status``: active (it has members) or inactive."""
    live = Count("members", filter=Q(members__left_at__isnull=True), distinct=True)
    swarms = Swarm.objects.annotate(
        member_count=live,
        running_tasks=Count("tasks", filter=Q(tasks__status__in=TaskStatus.ACTIVE), distinct=True),
    ).prefetch_related(current_members())
    if swarm_id is not None:
        swarms = swarms.filter(pk=swarm_id)
    if status == "active":
        swarms = swarms.filter(member_count__gt=0)
    elif status == "inactive":
        swarms = swarms.filter(member_count=0)
    return swarms.order_by("-created_at", "-id")


def swarm_get(*, swarm_id) -> Swarm:
    swarm = Swarm.objects.filter(pk=swarm_id).first()
    if swarm is None:
        raise NotFound("Swarm not found.", code="SWARM_NOT_FOUND")
    return swarm


def swarm_for_model(*, model: str) -> Swarm | None:
    """The swarm with the most live members able to run ``model`` (a coordination naming no swarm)."""
    able = miners_able_to_run(job=Job(model=model)).values("pk")
    return (
        Swarm.objects.annotate(able=Count("members", filter=Q(members__left_at__isnull=True, members__miner__in=able)))
        .filter(able__gt=0)
        .order_by("-able", "-created_at")
        .first()
    )


def tasks_visible_to(*, user, is_admin: bool = False) -> QuerySet[SwarmTask]:
    tasks = SwarmTask.objects.select_related("swarm")
    return tasks if is_admin else tasks.filter(client=user)


def task_for(*, user, task_id, is_admin: bool = False) -> SwarmTask:
    """The caller's task (anyone's for admin keys); another client's is not found."""
    task = tasks_visible_to(user=user, is_admin=is_admin).filter(pk=task_id).first()
    if task is None:
        raise NotFound("Swarm task not found.", code="TASK_NOT_FOUND")
    return task


def shares_of(task: SwarmTask) -> list[SwarmShare]:
    """Every share of the task, replaced ones included, in order."""
    return list(
        task.shares.select_related("job", "member__miner", "member__agent").order_by("index", "created_at", "id")
    )


def task_figures(task: SwarmTask, shares: list[SwarmShare]) -> dict:
    """``progress`` (percent of the current shares in), ``active_collaborators`` (members whose share
    is queued or running) and ``total_collaborators`` (members holding a current share)."""
    current = [s for s in shares if s.outcome != ShareOutcome.REPLACED]
    done = sum(1 for s in current if s.outcome != ShareOutcome.PENDING)
    progress = 100.0 if task.is_terminal else (round(100 * done / len(current), 1) if current else 0.0)
    active = {s.member_id for s in current if s.job.status in JobStatus.ACTIVE}
    return {
        "progress": progress,
        "active_collaborators": len(active),
        "total_collaborators": len({s.member_id for s in current}),
    }


def share_view(share: SwarmShare) -> dict:
    answered = share.job.status == JobStatus.COMPLETED
    return {
        "index": share.index,
        "miner_id": share.member.miner.miner_id,
        "agent_id": share.member.agent.agent_id if share.member.agent_id else None,
        "role": share.member.role,
        "job_id": share.job_id,
        "job_status": share.job.status,
        "outcome": share.outcome,
        "output": outputs.output_of(share.job) if answered else None,
    }


def consensus(task: SwarmTask, shares: list[SwarmShare], *, threshold: float) -> dict:
    """A redundant task's consensus at ``threshold``: reached when the task completed with an
    agreeing share of at least ``threshold`` (its payments followed the task's own threshold)."""
    agreeing = [s.member.miner.miner_id for s in shares if s.outcome == ShareOutcome.AGREED]
    dissenters = [s.member.miner.miner_id for s in shares if s.outcome == ShareOutcome.OUTVOTED]
    reached = task.status == TaskStatus.COMPLETED and task.agreement is not None and task.agreement + 1e-9 >= threshold
    return {
        "task_id": task.pk,
        "status": task.status,
        "consensus_reached": reached,
        "consensus_threshold": threshold,
        "output": task.output if reached else None,
        "agreement": task.agreement,
        "agreeing": agreeing,
        "dissenters": dissenters,
    }
