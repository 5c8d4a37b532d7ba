"""The agent registry and task distribution: every change to agents and their tasks.

An agent takes work through the job machinery: it is registered there as a miner serving
``AGENT_TASK_MODEL`` only, and each task is a job of type ``task`` for that model. Assigning a
task is claiming its job for the chosen agent's miner (``jobs.services.job_claim``), so the
lease, its fencing token, attempts, escrow, settlement and the receipt are the jobs' own; a
result from an agent that no longer holds the lease is ``409 LEASE_NOT_HELD`` and changes nothing.
"""

import json
import logging
import time
import uuid
from contextlib import suppress
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial, update_wrapper

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F
from django.utils import timezone

from accounts.models import User
from agents import dag, receipts
from agents import sql as agents_sql
from agents.models import (
    Agent,
    AgentStatus,
    Execution,
    ExecutionEvent,
    ExecutionStatus,
    ExecutionStep,
    StepStatus,
    Task,
    Workflow,
)
from agents.strategies import STRATEGIES, Candidate, fits
from catalog.payloads import PayloadError, requested_max_tokens
from catalog.selectors import catalog_entry
from core import rawsql
from core.errors import Conflict, Invalid, NotFound, ServiceError
from jobs import events as job_events
from jobs import services as job_services
from jobs import wakeup
from jobs.models import Job, JobPriority, JobStatus, JobType
from miners import services as miner_services
from miners.capabilities import AGENT_TASK_MODEL, Capabilities
from payments import services as payment_services
from payments.models import Payment

logger = logging.getLogger(__name__)

PRIORITIES = {priority.label: priority.value for priority in JobPriority}
# A poll counts as a heartbeat, recorded at most this often.
LIVENESS_RESOLUTION = timedelta(seconds=10)
ASSIGN_BATCH = 200
# The advisory lock assignment passes take turns on (an arbitrary constant of this app's).
ASSIGN_LOCK = 0x61676E74


def miner_id_for(agent_id: str) -> str:
    """The agent's seat in the job machinery, named apart from HTTP miners'."""
    return f"agent:{agent_id}"


def waiter_name(agent: Agent) -> str:
    return f"agent:{agent.pk}"


def priority_value(priority) -> int:
    """``urgent``, ``critical``, ``high``, ``normal`` or ``low`` as the jobs' priority; anything else
    is a 400 ``Invalid priority: …``, as the original coordinator answers."""
    if not isinstance(priority, str) or priority not in PRIORITIES:
        raise ServiceError(f"Invalid priority: {priority}", code="INVALID_PRIORITY", status_code=400)
    return PRIORITIES[priority]


# --- The registry ----------------------------------------------------------------------


def agent_register(
    *,
    owner,
    agent_id: str,
    agent_type: str,
    capabilities: list[str] | None = None,
    services: list[str] | None = None,
    endpoints: dict | None = None,
    metadata: dict | None = None,
    tags: list[str] | None = None,
    max_concurrent_tasks: int | None = None,
) -> Agent:
    """Register an agent, or update it when it registers again (it becomes active)."""
    metadata = metadata or {}
    now = timezone.now()
    with transaction.atomic():
        agent = Agent.objects.select_for_update().filter(agent_id=agent_id).first()
        if agent is not None and agent.owner_id != owner.pk:
            raise Conflict("This agent_id belongs to another account.", code="AGENT_ID_TAKEN")
        if agent is not None and agent.banned_at:
            raise ServiceError("This agent is banned.", code="AGENT_BANNED", status_code=403)
        miner, _ = miner_services.miner_register(
            owner=owner,
            miner_id=miner_id_for(agent_id),
            capabilities=Capabilities(
                models=(AGENT_TASK_MODEL,),
                max_concurrent_jobs=max_concurrent_tasks or settings.AGENT_MAX_CONCURRENT_TASKS,
                raw={"agent_type": agent_type, "capabilities": capabilities or []},
            ),
        )
        if agent is None:
            agent = Agent(agent_id=agent_id, owner=owner, registered_at=now)
        agent.miner = miner
        agent.agent_type = agent_type
        agent.capabilities = list(dict.fromkeys(capabilities or []))
        agent.services = list(dict.fromkeys(services or []))
        agent.endpoints = endpoints or {}
        agent.metadata = metadata
        agent.version = str(metadata.get("version") or "")[:64]
        agent.tags = list(dict.fromkeys(tags or []))
        agent.status = AgentStatus.ACTIVE
        agent.last_heartbeat_at = now
        agent.save()
        transaction.on_commit(assign_waiting_tasks, robust=True)
    return agent


def agent_update_status(*, agent: Agent, status: str, load_metrics: dict | None = None) -> Agent:
    """The agent says what it is now (``active`` takes tasks; ``busy``, ``inactive`` and ``stale`` don't)."""
    if status not in AgentStatus.values:
        raise ServiceError(
            f"Invalid status: {status}", code="INVALID_STATUS", status_code=422, errors={"status": ["Unknown status."]}
        )
    with transaction.atomic():
        fields = {"status": status, "updated_at": timezone.now()}
        if load_metrics is not None:
            fields["load_metrics"] = load_metrics
        Agent.objects.filter(pk=agent.pk).update(**fields)
        if status == AgentStatus.ACTIVE:
            _alive(agent)
            transaction.on_commit(assign_waiting_tasks, robust=True)
    agent.refresh_from_db()
    return agent


def agent_heartbeat(*, agent: Agent, load_metrics: dict | None = None) -> Agent:
    """The agent is alive: a stale agent is active again, and the leases of its tasks are extended."""
    with transaction.atomic():
        _alive(agent, load_metrics=load_metrics)
    transaction.on_commit(assign_waiting_tasks, robust=True)
    agent.refresh_from_db()
    return agent


def _alive(agent: Agent, *, load_metrics: dict | None = None) -> None:
    if agent.banned_at:
        raise ServiceError("This agent is banned.", code="AGENT_BANNED", status_code=403)
    now = timezone.now()
    fields = {"last_heartbeat_at": now, "updated_at": now}
    if load_metrics is not None:
        fields["load_metrics"] = load_metrics
    Agent.objects.filter(pk=agent.pk).update(**fields)
    Agent.objects.filter(pk=agent.pk, status=AgentStatus.STALE).update(status=AgentStatus.ACTIVE)
    job_services.miner_heartbeat(miner=agent.miner)
    agent.last_heartbeat_at = now


def agent_set_weight(*, agent: Agent, weight: float) -> Agent:
    if not weight > 0:
        raise ServiceError("A weight must be positive.", code="INVALID_WEIGHT", status_code=422)
    Agent.objects.filter(pk=agent.pk).update(weight=weight, updated_at=timezone.now())
    agent.weight = weight
    return agent


def agent_ban(*, agent: Agent) -> int:
    """Staff ban an agent: it gets no tasks, and those it holds go to others. Returns how many."""
    with transaction.atomic():
        Agent.objects.filter(pk=agent.pk).update(banned_at=timezone.now(), status=AgentStatus.INACTIVE)
        released = job_services.miner_take_offline(miner=agent.miner)
        transaction.on_commit(assign_waiting_tasks, robust=True)
    return released


def agent_unban(*, agent: Agent) -> Agent:
    Agent.objects.filter(pk=agent.pk).update(banned_at=None, updated_at=timezone.now())
    agent.refresh_from_db()
    return agent


def agents_mark_stale(*, now=None) -> int:
    """Agents silent past ``AGENT_HEARTBEAT_TIMEOUT_SECONDS`` become stale; their tasks go back to the
    queue (the lost attempts count against them) and on to other agents."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.AGENT_HEARTBEAT_TIMEOUT_SECONDS)
    silent = list(
        Agent.objects.select_related("miner").filter(last_heartbeat_at__lt=cutoff).exclude(status=AgentStatus.STALE)
    )
    marked = 0
    for agent in silent:
        with transaction.atomic():
            # A heartbeat arriving meanwhile wins: only a still-silent agent becomes stale.
            if (
                not Agent.objects.filter(pk=agent.pk, last_heartbeat_at__lt=cutoff)
                .exclude(status=AgentStatus.STALE)
                .update(status=AgentStatus.STALE, updated_at=now)
            ):
                continue
            miner_services.miner_mark_offline(miner=agent.miner)
            released = job_services.jobs_release_for_miner(
                miner=agent.miner, reason="The agent stopped sending heartbeats.", blame=True
            )
            if released:
                Agent.objects.filter(pk=agent.pk).update(tasks_failed=F("tasks_failed") + released)
            marked += 1
    if marked:
        assign_waiting_tasks()
    return marked


# --- Tasks -----------------------------------------------------------------------------


def task_submit(
    *,
    client,
    task_data: dict,
    priority: str,
    requirements: dict | None = None,
    budget: Decimal | None = None,
    ttl_seconds: int | None = None,
    idempotency_key: str | None = None,
    key_is_new: bool = False,
    pinned_miner=None,
    settle_on_verdict: bool = False,
) -> Task:
    """Queue a task as a job of type ``task``; a ``budget`` is held in escrow from the client's
    wallet and paid to the owner of the agent that completes it. A task pinned to an agent's miner
    (``pinned_miner``: a swarm's share) goes to that agent only; ``settle_on_verdict`` is the job's."""
    level = priority_value(priority)
    requirements = requirements or {}
    with transaction.atomic():
        submission = job_services.job_submit(
            client=client,
            model=AGENT_TASK_MODEL,
            payload=task_data,
            job_type=JobType.TASK,
            priority=level,
            ttl_seconds=ttl_seconds,
            payment_amount=budget,
            idempotency_key=idempotency_key,
            key_is_new=key_is_new,
            pinned_miner=pinned_miner,
            settle_on_verdict=settle_on_verdict,
        )
        task = Task.objects.create(
            job=submission.job,
            task_type=str(task_data.get("task_type") or "")[:64],
            required_capabilities=list(dict.fromkeys(requirements.get("capabilities") or [])),
            required_agent_type=str(requirements.get("agent_type") or "")[:64],
        )
        # Queued tasks that fit an agent with room were given out already: only this one can be new.
        transaction.on_commit(update_wrapper(partial(tasks_assign, task_ids=[task.pk]), tasks_assign), robust=True)
    return task


def assign_waiting_tasks() -> int:
    """``tasks_assign``, for after a commit: a failure is logged (housekeeping assigns again)."""
    return tasks_assign()


def tasks_assign(*, limit: int = ASSIGN_BATCH, strategy: str | None = None, task_ids: list | None = None) -> int:
    """Give queued tasks (of ``task_ids`` when given), best first, to the agents that fit them,
    chosen by the strategy (``AGENT_LB_STRATEGY``). A task no agent fits waits. Returns how many
    were assigned.

    A pass chooses an agent for each task in memory, then leases the tasks' jobs to the chosen
    agents' miners in one batch (``jobs.services.jobs_lease_to``): a job is leased once however
    many assign at once, and an agent's concurrency limit holds (its miner's row is locked). A task
    the batch left queued (its agent filled up or went away meanwhile) is chosen for again among
    the others. A pass is one transaction; on PostgreSQL passes take turns on an advisory lock, so
    two never wait on each other's agents in opposite orders."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ASSIGN_LOCK])
        given = _assign_pass(limit=limit, strategy=strategy, task_ids=task_ids)
        if given:
            by_count: dict[int, list] = {}
            for candidate, job_ids in given.items():
                by_count.setdefault(len(job_ids), []).append(candidate.agent.pk)
            for count, pks in by_count.items():  # a statement per count, not per agent
                Agent.objects.filter(pk__in=pks).update(assignments=F("assignments") + count)
            # Delivered once this commits, when the leases are visible.
            wakeup.announce_to_many([(waiter_name(c.agent), job_ids[-1]) for c, job_ids in given.items()])
    return sum(len(job_ids) for job_ids in given.values())


def _assign_pass(*, limit: int, strategy: str | None, task_ids: list | None) -> dict:
    choose = STRATEGIES[strategy or settings.AGENT_LB_STRATEGY]
    now = timezone.now()
    queued = (
        Task.objects.select_related("job")
        .filter(job__status=JobStatus.QUEUED, job__model=AGENT_TASK_MODEL, job__expires_at__gt=now)
        .only("job_id", "task_type", "required_capabilities", "required_agent_type", "job__req_miner_id")
    )
    if task_ids is not None:
        queued = queued.filter(pk__in=task_ids)
    queued = list(queued.order_by("job__rank_at")[:limit])
    if not queued:
        return {}
    agents = list(
        Agent.objects.select_related("miner")
        .filter(status=AgentStatus.ACTIVE, banned_at__isnull=True)
        .defer("services", "endpoints", "metadata", "tags", "load_metrics")  # what choosing never reads
    )
    if not agents:
        return {}
    running = _running_counts([agent.miner_id for agent in agents])
    candidates = [
        Candidate(agent=agent, running=running.get(agent.miner_id, 0), capacity=agent.miner.max_concurrent_jobs)
        for agent in agents
    ]
    given: dict[Candidate, list] = {}
    while queued:
        planned = _plan(queued, candidates, choose)
        if not planned:
            break
        leased = {
            job.pk
            for job in job_services.jobs_lease_to([(chosen.agent.miner, task.job_id) for task, chosen in planned])
        }
        queued = []
        for task, chosen in planned:
            if task.job_id in leased:
                given.setdefault(chosen, []).append(task.job_id)
            else:
                # Full, or gone offline meanwhile: choose again among the others, if it still waits.
                chosen.running, chosen.agent.assignments = chosen.capacity, chosen.agent.assignments - 1
                queued.append(task)
        if queued:
            waiting = Job.objects.filter(pk__in=[task.job_id for task in queued], status=JobStatus.QUEUED)
            still = set(waiting.values_list("pk", flat=True))
            queued = [task for task in queued if task.job_id in still]
    return given


def _plan(tasks: list[Task], candidates: list[Candidate], choose) -> list[tuple[Task, Candidate]]:
    """An agent for each task that one fits, as the strategy chooses, counting each choice as taken."""
    # The agents with room that fit each distinct requirement, worked out once per pass.
    fitting_by_need: dict[tuple, list[Candidate]] = {}
    planned = []
    for task in tasks:
        need = (task.required_agent_type, tuple(task.required_capabilities), task.job.req_miner_id)
        if need not in fitting_by_need:
            fitting_by_need[need] = [c for c in candidates if c.running < c.capacity and fits(c.agent, task)]
        fitting = fitting_by_need[need]
        if fitting:
            chosen = choose(fitting, task)
            chosen.agent.assignments += 1
            chosen.running += 1
            planned.append((task, chosen))
            if chosen.running >= chosen.capacity:
                for others in fitting_by_need.values():
                    if chosen in others:
                        others.remove(chosen)
    return planned


def _running_counts(miner_ids: list[int]) -> dict[int, int]:
    rows = (
        Job.objects.filter(miner__in=miner_ids, status=JobStatus.RUNNING)
        .values_list("miner")
        .annotate(count=Count("pk"))
        .order_by()
    )
    return dict(rows)


def _deliverable(agent: Agent, limit: int) -> list[Task]:
    """Tasks leased to the agent that it has not received yet, marked received."""
    tasks = list(
        Task.objects.select_related("job", "job__payment")
        .filter(job__miner=agent.miner_id, job__status=JobStatus.RUNNING, delivered_attempt__lt=F("job__attempt"))
        .order_by("job__rank_at")[:limit]
    )
    delivered = []
    for task in tasks:
        # Two polls of one agent at once: each task goes to one of them.
        if Task.objects.filter(pk=task.pk, delivered_attempt__lt=task.job.attempt).update(
            delivered_attempt=task.job.attempt
        ):
            task.delivered_attempt = task.job.attempt
            delivered.append(task)
    return delivered


def agent_poll(*, agent: Agent, limit: int = 1, wait_seconds: float = 0) -> list[Task]:
    """A long poll: the tasks assigned to this agent and not yet received, waiting up to
    ``wait_seconds`` for one. A poll is a heartbeat too."""
    if (
        agent.status == AgentStatus.STALE
        or not agent.last_heartbeat_at
        or timezone.now() - agent.last_heartbeat_at >= LIVENESS_RESOLUTION
    ):
        agent_heartbeat(agent=agent)
    tasks_assign()
    tasks = _deliverable(agent, limit)
    if tasks or wait_seconds <= 0:
        return tasks

    def assigned_and_deliverable() -> list[Task]:
        tasks_assign()
        return _deliverable(agent, limit)

    # Woken by a task queued or assigned to this agent; looks again every few seconds regardless,
    # since an assignment made elsewhere may have been announced before it waited.
    return wakeup.wait_for_work(
        [AGENT_TASK_MODEL, waiter_name(agent)],
        assigned_and_deliverable,
        first=partial(_deliverable, agent, limit),
        deadline=time.monotonic() + wait_seconds,
        look_every=5,
    )


def _task_for_agent(task_id) -> Task:
    task = Task.objects.select_related("job").filter(pk=task_id).first()
    if task is None:
        raise NotFound("Task not found.", code="TASK_NOT_FOUND")
    return task


def task_complete(*, agent: Agent, task_id, result, lease_token: str | None = None) -> job_services.Completion:
    """The agent holding the task's lease reports its result: the job completes, its escrow pays the
    agent's owner, and it is receipted. Anyone else is a 409 that changes nothing."""
    _task_for_agent(task_id)
    with transaction.atomic():
        completion = job_services.job_complete(
            job_id=task_id, miner=agent.miner, result={"output": result}, lease_token=lease_token
        )
        Agent.objects.filter(pk=agent.pk).update(tasks_completed=F("tasks_completed") + 1)
        transaction.on_commit(assign_waiting_tasks, robust=True)
    return completion


def task_fail(*, agent: Agent, task_id, error: str, lease_token: str | None = None) -> Job:
    """The agent holding the task's lease gives it up: it goes back to the queue (to another agent,
    if one fits), or fails once its attempts are spent and its escrow is refunded."""
    _task_for_agent(task_id)
    with transaction.atomic():
        job = job_services.job_fail(
            job_id=task_id, miner=agent.miner, error_code="TASK_FAILED", error_message=error, lease_token=lease_token
        )
        Agent.objects.filter(pk=agent.pk).update(tasks_failed=F("tasks_failed") + 1)
        transaction.on_commit(assign_waiting_tasks, robust=True)
    return job


def tasks_clear_queue(*, priority: str) -> int:
    """Cancel the tasks waiting at ``priority`` (their escrow is refunded). Returns how many."""
    level = priority_value(priority)
    ids = list(
        Job.objects.filter(type=JobType.TASK, status=JobStatus.QUEUED, priority=level).values_list("pk", flat=True)
    )
    cleared = 0
    for job_id in ids:
        try:
            job_services.job_cancel(job_id=job_id)
        except ServiceError:
            continue  # assigned or ended meanwhile
        cleared += 1
    return cleared


def task_cancel(*, task_id) -> Job:
    return job_services.job_cancel(job_id=task_id)


# --- Workflows and their executions ------------------------------------------------------

WORKFLOW_FIELDS = (
    "name", "description", "steps", "dependencies", "max_execution_time", "max_cost_budget", "requires_verification",
    "verification_level", "tags", "is_public",
)  # fmt: skip
# A retried step waits this long times 2^(retry - 1), at most RETRY_BACKOFF_CAP.
RETRY_BACKOFF = timedelta(seconds=2)
RETRY_BACKOFF_CAP = timedelta(minutes=5)


def workflow_create(*, owner, **fields) -> Workflow:
    dag.check(fields.get("steps"), fields.get("dependencies") or {})
    return Workflow.objects.create(owner=owner, **{k: v for k, v in fields.items() if k in WORKFLOW_FIELDS})


def workflow_update(*, workflow: Workflow, **fields) -> Workflow:
    fields = {k: v for k, v in fields.items() if k in WORKFLOW_FIELDS}
    dag.check(fields.get("steps", workflow.steps), fields.get("dependencies", workflow.dependencies) or {})
    for name, value in fields.items():
        setattr(workflow, name, value)
    workflow.save()
    return workflow


def workflow_delete(*, workflow: Workflow) -> None:
    """Its executions stay, with the steps they ran."""
    workflow.delete()


def workflow_execute(
    *, workflow: Workflow, client, inputs: dict, max_cost_budget: Decimal | None = None, max_execution_time=None
) -> Execution:
    """Start an execution: its budget is held in escrow, and the steps waiting for nothing start once
    this commits."""
    missing = dag.missing_inputs(workflow.steps, inputs)
    if missing:
        raise Invalid(
            f"Missing inputs: {', '.join(missing)}.",
            code="MISSING_INPUT",
            errors={"inputs": [f"{m} is required." for m in missing]},
        )
    budget = max_cost_budget if max_cost_budget is not None else workflow.max_cost_budget
    now = timezone.now()
    with transaction.atomic():
        execution = Execution.objects.create(
            workflow=workflow,
            client=client,
            steps=workflow.steps,
            dependencies=workflow.dependencies or {},
            inputs=inputs,
            budget=budget,
            started_at=now,
            deadline=now + timedelta(seconds=max_execution_time or workflow.max_execution_time),
        )
        ExecutionStep.objects.bulk_create(
            ExecutionStep(execution=execution, step_id=step_id)
            for step_id in dag.topological_order(execution.steps, execution.dependencies)
        )
        if budget:
            payment_services.budget_hold(
                user=client, amount=budget, key=_budget_key(execution), memo=f"Budget of execution {execution.pk}"
            )
        _log(execution, "", "started", message=f"{len(execution.steps)} steps")
        transaction.on_commit(
            update_wrapper(partial(advance_after_commit, execution.pk), advance_after_commit), robust=True
        )
    return execution


def _budget_key(execution: Execution) -> str:
    return f"execution:{execution.pk}"


def _log(execution: Execution, step_id: str, kind: str, *, job_id=None, message: str = "") -> None:
    """Add an event to the execution's log: written at once, or with the others of an advance (``_write``)."""
    event = ExecutionEvent(execution=execution, step_id=step_id, kind=kind, job_id=job_id, message=message[:2000])
    pending = getattr(execution, "pending_events", None)
    if pending is None:
        event.save()
    else:
        pending.append(event)


def _changed(execution: Execution, row: ExecutionStep, *fields: str) -> None:
    """A step row changed in an advance: written with the others (``_write``)."""
    execution.changed_rows.setdefault(row, set()).update(fields)


def _write(execution: Execution) -> None:
    """Store what an advance changed in its steps and log: a statement for each, however many."""
    changed = execution.changed_rows
    if changed and connection.vendor == "postgresql":
        values = [
            {"id": row.pk, **{name: _as_json(getattr(row, name)) for name in agents_sql.STEP_FIELDS}} for row in changed
        ]
        with connection.cursor() as cursor:
            cursor.execute(agents_sql.STEP_CHANGES, [json.dumps(values)])
    elif len(changed) == 1:
        ((row, fields),) = changed.items()
        row.save(update_fields=fields)
    elif changed:
        ExecutionStep.objects.bulk_update(list(changed), sorted(set().union(*changed.values())))
    ExecutionEvent.objects.bulk_create(execution.pending_events)


def _as_json(value):
    """A step field's value as ``STEP_CHANGES`` reads it from JSON (times and amounts as text)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    return value


STEP_JOB_KEY = "workflow-step"


def _step_job_key(execution: Execution, step_id: str, attempt: int) -> str:
    """The Idempotency-Key of a step's job: a replayed start gets the same job, and the jobs' hook
    knows a step's job (and its execution) without reading anything."""
    return f"{STEP_JOB_KEY}:{execution.pk}:{step_id}:{attempt}"


def execution_group(execution_id) -> str:
    """The channel group of ``ws/executions/<id>/``, the execution's live page."""
    return f"execution-{execution_id}"


EXECUTION_CHANGED = "execution.changed"


def publish_execution_changed(execution_id) -> None:
    """Tell the execution's sockets it changed (they read it again): sent off this thread."""
    job_events.publish_to_groups([(execution_group(execution_id), {"type": EXECUTION_CHANGED})])


def advance_after_commit(execution_id) -> None:
    execution_advance(execution_id=execution_id)


def executions_advance_for_jobs(jobs) -> None:
    """The jobs' hook (``jobs.services.when_finished``): advance the executions whose steps just ended."""
    executions = {
        job.idempotency_key.split(":")[1]
        for job in jobs
        if job.is_terminal and (job.idempotency_key or "").startswith(f"{STEP_JOB_KEY}:")
    }
    for execution_id in executions:
        with suppress(ValueError):  # a client's own key that only looks like a step's
            execution_advance(execution_id=uuid.UUID(execution_id))


def executions_advance_running() -> int:
    """Housekeeping: advance every running execution (due retries, lapsed deadlines, a missed hook)."""
    running = list(Execution.objects.filter(status=ExecutionStatus.RUNNING).values_list("pk", flat=True))
    for execution_id in running:
        execution_advance(execution_id=execution_id)
    return len(running)


def execution_advance(*, execution_id) -> Execution | None:
    """Take in the steps' ended jobs and start the steps now ready. Idempotent, and safe to run at once
    from many processes: the execution's row is locked, so each step's attempt starts once."""
    with transaction.atomic():
        execution = _locked_execution(execution_id)
        if execution is None or execution.status in ExecutionStatus.TERMINAL:
            return execution
        execution.pending_events, execution.changed_rows = [], {}
        figures = (execution.drawn, execution.total_cost)
        _advance(execution)
        _write(execution)
        if execution.pending_events:
            transaction.on_commit(partial(publish_execution_changed, execution.pk))
        if execution.status == ExecutionStatus.RUNNING and (execution.drawn, execution.total_cost) != figures:
            execution.save(update_fields=["drawn", "total_cost", "updated_at"])
    return execution


def _locked_execution(execution_id) -> Execution | None:
    """The execution, its row locked, with its client."""
    if connection.vendor != "postgresql":
        return Execution.objects.select_for_update().select_related("client").filter(pk=execution_id).first()
    with connection.cursor() as cursor:
        cursor.execute(agents_sql.LOCK_EXECUTION, [execution_id])
        rows = cursor.fetchall()
    if not rows:
        return None
    (execution,) = rawsql.instances(Execution, rows)
    (execution.client,) = rawsql.instances(User, rows, start=len(Execution._meta.concrete_fields))
    return execution


def _step_rows(execution: Execution) -> dict[str, ExecutionStep]:
    """The execution's steps by step id, each with its job and the job's payment."""
    if connection.vendor != "postgresql":
        return {row.step_id: row for row in execution.step_rows.select_related("job", "job__payment")}
    with connection.cursor() as cursor:
        cursor.execute(agents_sql.STEP_ROWS, [execution.pk])
        rows = cursor.fetchall()
    steps = rawsql.instances(ExecutionStep, rows)
    job_start = len(ExecutionStep._meta.concrete_fields)
    payment_start = job_start + len(Job._meta.concrete_fields)
    for step, row in zip(steps, rows, strict=True):
        step.execution = execution
        job = rawsql.instances(Job, [row], start=job_start)[0] if step.job_id else None
        if job is not None:
            job.payment = rawsql.instances(Payment, [row], start=payment_start)[0] if job.payment_id else None
        step.job = job
    return {step.step_id: step for step in steps}


def _advance(execution: Execution) -> None:
    """Take in the running steps' ended jobs, then end the execution or start what is ready."""
    now = timezone.now()
    rows = _step_rows(execution)
    for row in rows.values():
        if row.status == StepStatus.RUNNING:
            _take_in(execution, row, now=now)
    failed = next((row for row in rows.values() if row.status == StepStatus.FAILED), None)
    if failed is not None:
        _end(execution, rows, ExecutionStatus.FAILED, error=f"Step {failed.step_id} failed: {failed.error}", now=now)
        return
    if now >= execution.deadline:
        _end(execution, rows, ExecutionStatus.FAILED, error="The execution ran out of time.", now=now)
        return
    if all(row.status == StepStatus.COMPLETED for row in rows.values()):
        _complete(execution, rows, now=now)
        return
    outputs = {step_id: row.output for step_id, row in rows.items() if row.status == StepStatus.COMPLETED}
    for step_id, row in rows.items():
        waits_for = execution.dependencies.get(step_id, [])
        ready = row.status == StepStatus.WAITING and all(d in outputs for d in waits_for)
        if ready and (row.not_before is None or row.not_before <= now):
            try:
                _start(execution, row, outputs=outputs, now=now)
            except ServiceError as error:
                row.status, row.error = StepStatus.FAILED, error.detail
                _changed(execution, row, "status", "error")
                _log(execution, step_id, "failed", message=error.detail)
                _end(execution, rows, ExecutionStatus.FAILED, error=f"Step {step_id} failed: {error.detail}", now=now)
                return


def _start(execution: Execution, row: ExecutionStep, *, outputs: dict, now) -> None:
    step = execution.steps[row.step_id]
    attempt = row.attempts + 1
    budget = dag.step_budget(step)
    if budget is None and dag.step_type(step) != dag.TASK_STEP_TYPE:
        budget = _catalog_price(step)
    budget = budget or Decimal(0)
    if execution.budget is not None:
        if execution.drawn + budget > execution.budget:
            raise ServiceError(
                f"the step would take the execution past its budget of {execution.budget}.",
                code="BUDGET_EXCEEDED",
                status_code=402,
            )
        payment_services.budget_draw(
            user=execution.client, amount=budget, key=_budget_key(execution), part=f"{row.step_id}:{attempt}"
        )
        execution.drawn += budget
    ttl = step.get("timeout_seconds", dag.DEFAULT_TIMEOUT_SECONDS)
    if dag.step_type(step) == dag.TASK_STEP_TYPE:
        task_data = dag.render_value(step.get("task_data") or {}, inputs=execution.inputs, outputs=outputs)
        if step.get("task_type"):
            task_data = {"task_type": step["task_type"], **task_data}
        task = task_submit(
            client=execution.client,
            task_data=task_data,
            priority=step.get("priority", "normal"),
            requirements=step.get("requirements") or {},
            budget=budget or None,
            ttl_seconds=ttl,
            idempotency_key=_step_job_key(execution, row.step_id, attempt),
            key_is_new=True,  # the execution is locked, and its step row names no job for this attempt
        )
        job = task.job
    else:
        text = dag.render_value(step.get("prompt", step.get("input")), inputs=execution.inputs, outputs=outputs)
        payload = dag.job_payload(step, text=text)
        entry = catalog_entry(step["model"])
        if entry is None:
            raise ServiceError(f"model {step['model']!r} left the catalog.", code="UNKNOWN_MODEL", status_code=422)
        try:
            dag.check_job_payload(payload, entry=entry)
        except PayloadError as error:
            raise ServiceError(error.message, code=error.code, status_code=422) from None
        job = job_services.job_submit(
            client=execution.client,
            model=step["model"],
            payload=payload,
            job_type=JobType.INFERENCE if dag.step_type(step) == "inference" else dag.step_type(step),
            ttl_seconds=ttl,
            payment_amount=budget or None,
            idempotency_key=_step_job_key(execution, row.step_id, attempt),
            key_is_new=True,  # the execution is locked, and its step row names no job for this attempt
        ).job
    row.job, row.attempts, row.status, row.not_before = job, attempt, StepStatus.RUNNING, None
    row.started_at = row.started_at or now
    _changed(execution, row, "job", "attempts", "status", "not_before", "started_at")
    _log(execution, row.step_id, "queued" if attempt == 1 else "requeued", job_id=job.pk, message=f"attempt {attempt}")


def _catalog_price(step: dict) -> Decimal:
    entry = catalog_entry(step["model"])
    if entry is None or entry.price_per_1k_tokens <= 0:
        return Decimal(0)
    max_tokens = requested_max_tokens({"params": step.get("params") or {}})
    tokens = max_tokens if max_tokens is not None else entry.default_max_tokens
    if not entry.generates_text:
        tokens = entry.max_tokens
    return payment_services.credits(entry.price_per_1k_tokens * tokens / 1000)


def _take_in(execution: Execution, row: ExecutionStep, *, now) -> None:
    """Record what became of a running step's job: its output, a retry after backoff, or its failure."""
    job = row.job
    step = execution.steps[row.step_id]
    if job.status == JobStatus.RUNNING and row.started_at and job.started_at:
        timeout = step.get("timeout_seconds", dag.DEFAULT_TIMEOUT_SECONDS)
        if (now - job.started_at).total_seconds() > timeout:
            job = job_services.job_cancel(job_id=job.pk)
            job.error_message = f"The step ran past its timeout of {timeout} s."
    if job.status in JobStatus.ACTIVE:
        return
    if job.status == JobStatus.COMPLETED:
        row.status, row.finished_at = StepStatus.COMPLETED, now
        row.output = _output(job)
        row.cost = (job.amount_charged or Decimal(0)) if job.payment_id else Decimal(0)
        execution.total_cost += row.cost
        _changed(execution, row, "status", "finished_at", "output", "cost")
        _log(execution, row.step_id, "finished", job_id=job.pk)
        return
    error = job.error_message or job.error_code or job.status
    if job.payment_id and execution.budget is not None:
        # The job's refund went to the client: back into the budget, which stays whole for a retry.
        payment_services.budget_return(
            user=execution.client, amount=job.price, key=_budget_key(execution), part=f"{row.step_id}:{row.attempts}"
        )
        execution.drawn -= job.price
    if row.attempts <= step.get("retries", 0):
        delay = min(RETRY_BACKOFF * 2 ** (row.attempts - 1), RETRY_BACKOFF_CAP)
        row.status, row.not_before, row.error = StepStatus.WAITING, now + delay, error
        _changed(execution, row, "status", "not_before", "error")
        _log(execution, row.step_id, "retried", job_id=job.pk, message=f"{error}; again in {delay.total_seconds():g} s")
        return
    row.status, row.finished_at, row.error = StepStatus.FAILED, now, error
    _changed(execution, row, "status", "finished_at", "error")
    _log(execution, row.step_id, "failed", job_id=job.pk, message=error)


def _output(job: Job):
    """``{{steps.<id>.output}}``: a generation's text, an agent task's result, else the whole result."""
    result = job.result if isinstance(job.result, dict) else {"output": job.result}
    if job.type == JobType.TASK:
        return result.get("output")
    if isinstance(result.get("text"), str):
        return result["text"]
    return result


def _end(execution: Execution, rows: dict, status: str, *, error: str = "", now) -> None:
    """End the execution: nothing new starts, its running steps' jobs are cancelled (refunded), and
    what is left of its budget goes back to the client."""
    for row in rows.values():
        if row.status == StepStatus.RUNNING:
            if row.job is not None and not row.job.is_terminal:
                with suppress(ServiceError):
                    job_services.job_cancel(job_id=row.job_id)
            row.status, row.finished_at = StepStatus.CANCELLED, now
            _changed(execution, row, "status", "finished_at")
            _log(execution, row.step_id, "cancelled", job_id=row.job_id)
        elif row.status == StepStatus.WAITING:
            row.status = StepStatus.CANCELLED
            _changed(execution, row, "status")
    execution.status, execution.error, execution.completed_at = status, error, now
    _release(execution)
    execution.save(update_fields=["status", "error", "completed_at", "drawn", "total_cost", "updated_at"])
    _log(execution, "", status, message=error)


def _release(execution: Execution) -> None:
    if execution.budget:
        payment_services.budget_release(
            user=execution.client, key=_budget_key(execution), memo=f"Unspent budget of execution {execution.pk}"
        )


def _complete(execution: Execution, rows: dict, *, now) -> None:
    depended_on = {d for deps in execution.dependencies.values() for d in deps}
    sinks = [step_id for step_id in rows if step_id not in depended_on]
    execution.final_result = (
        rows[sinks[0]].output if len(sinks) == 1 else {step_id: rows[step_id].output for step_id in sorted(sinks)}
    )
    execution.status, execution.completed_at = ExecutionStatus.COMPLETED, now
    execution.receipt = receipts.execution_receipt(execution, rows)
    _release(execution)
    execution.save(
        update_fields=["status", "final_result", "completed_at", "receipt", "drawn", "total_cost", "updated_at"]
    )
    _log(execution, "", "completed", message=f"total cost {execution.total_cost}")


def execution_cancel(*, execution: Execution) -> Execution:
    """Graceful: nothing new starts; running steps are cancelled and refunded, the budget's rest too."""
    with transaction.atomic():
        execution = Execution.objects.select_for_update().get(pk=execution.pk)
        if execution.status in ExecutionStatus.TERMINAL:
            raise Conflict(f"The execution is {execution.status}.", code="EXECUTION_NOT_CANCELABLE")
        rows = {row.step_id: row for row in execution.step_rows.select_related("job")}
        execution.pending_events, execution.changed_rows = [], {}
        _end(execution, rows, ExecutionStatus.CANCELLED, error="Cancelled by its client.", now=timezone.now())
        _write(execution)
        transaction.on_commit(partial(publish_execution_changed, execution.pk))
    return execution
