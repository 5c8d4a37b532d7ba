import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class AgentStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    INACTIVE = "inactive", "Inactive"
    BUSY = "busy", "Busy"
    STALE = "stale", "Stale"


class Agent(models.Model):
    """An autonomous worker that takes tasks. Its tasks are jobs (``jobs.models.JobType.TASK``),
    leased to ``miner``, the agent's seat in the job machinery: leases, fencing, attempts, escrow
    and receipts are the jobs'. Only an ``active`` agent is given tasks."""

    agent_id = models.CharField(max_length=128, unique=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="agents")
    miner = models.OneToOneField("miners.Miner", on_delete=models.PROTECT, related_name="agent")
    agent_type = models.CharField(max_length=64)
    capabilities = models.JSONField(default=list, blank=True)
    services = models.JSONField(default=list, blank=True)
    endpoints = models.JSONField(default=dict, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    version = models.CharField(max_length=64, blank=True)
    tags = models.JSONField(default=list, blank=True)

    status = models.CharField(max_length=16, choices=AgentStatus.choices, default=AgentStatus.ACTIVE)
    load_metrics = models.JSONField(default=dict, blank=True, help_text="As the agent last reported them.")
    weight = models.FloatField(default=1.0, help_text="Its share of tasks under weighted round robin.")
    assignments = models.PositiveIntegerField(default=0, help_text="Tasks assigned to it so far.")
    tasks_completed = models.PositiveIntegerField(default=0)
    tasks_failed = models.PositiveIntegerField(default=0, help_text="Attempts it failed or lost by going stale.")

    banned_at = models.DateTimeField(null=True, blank=True, help_text="A banned agent gets no tasks.")
    registered_at = models.DateTimeField(default=timezone.now, editable=False)
    last_heartbeat_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["agent_id"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=AgentStatus.values), name="agent_status_valid"),
            models.CheckConstraint(condition=Q(weight__gt=0), name="agent_weight_positive"),
        ]
        indexes = [
            models.Index(fields=["last_heartbeat_at"], condition=~Q(status="stale"), name="agent_live_hb_idx"),
        ]

    def __str__(self) -> str:
        return self.agent_id


class Task(models.Model):
    """What an agent's task asks beyond its job: the job holds its data (``payload``), priority,
    status, lease, result, escrow and receipt."""

    job = models.OneToOneField("jobs.Job", on_delete=models.PROTECT, primary_key=True, related_name="agent_task")
    task_type = models.CharField(max_length=64, blank=True)
    required_capabilities = models.JSONField(default=list, blank=True)
    required_agent_type = models.CharField(max_length=64, blank=True)
    # The job's attempt its agent last received: a running task with a newer attempt waits for its agent's poll.
    delivered_attempt = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["-job__created_at"]

    def __str__(self) -> str:
        return f"task {self.job_id}"


class Workflow(models.Model):
    """A DAG of steps: ``steps`` keyed by step id, ``dependencies`` mapping a step to those it waits for."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="workflows")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    steps = models.JSONField()
    dependencies = models.JSONField(default=dict, blank=True)
    max_execution_time = models.PositiveIntegerField(default=3600, help_text="Seconds an execution may run.")
    max_cost_budget = models.DecimalField(max_digits=24, decimal_places=8, null=True, blank=True)
    requires_verification = models.BooleanField(default=False)
    verification_level = models.CharField(max_length=32, default="basic")
    tags = models.JSONField(default=list, blank=True)
    is_public = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "-created_at"], name="workflow_owner_idx")]

    def __str__(self) -> str:
        return self.name


class ExecutionStatus(models.TextChoices):
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ExecutionStatus.TERMINAL = (ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED)


class Execution(models.Model):
    """One run of a workflow, with the workflow's steps and dependencies as they were when it started.
    Its progress lives in its rows only: whoever advances it (``execution_advance``) locks this row."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workflow = models.ForeignKey(Workflow, on_delete=models.SET_NULL, null=True, related_name="executions")
    client = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="executions")
    steps = models.JSONField()
    dependencies = models.JSONField(default=dict)
    inputs = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=ExecutionStatus.choices, default=ExecutionStatus.RUNNING)
    budget = models.DecimalField(max_digits=24, decimal_places=8, null=True, blank=True)
    drawn = models.DecimalField(max_digits=24, decimal_places=8, default=0, help_text="Budget handed to steps.")
    total_cost = models.DecimalField(max_digits=24, decimal_places=8, default=0)
    final_result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    receipt = models.JSONField(null=True, blank=True, help_text="The signed Merkle root over the step receipts.")
    started_at = models.DateTimeField(default=timezone.now)
    deadline = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=ExecutionStatus.values), name="execution_status_valid"),
        ]
        indexes = [
            models.Index(fields=["client", "-started_at"], name="execution_client_idx"),
            models.Index(fields=["deadline"], condition=Q(status="running"), name="execution_running_idx"),
        ]

    def __str__(self) -> str:
        return f"execution {self.id} ({self.status})"


class StepStatus(models.TextChoices):
    WAITING = "waiting", "Waiting"
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


class ExecutionStep(models.Model):
    """A step of an execution: its current job (one per attempt), output and cost."""

    execution = models.ForeignKey(Execution, on_delete=models.CASCADE, related_name="step_rows")
    step_id = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=StepStatus.choices, default=StepStatus.WAITING)
    job = models.OneToOneField(
        "jobs.Job", on_delete=models.PROTECT, null=True, blank=True, related_name="workflow_step"
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    not_before = models.DateTimeField(null=True, blank=True, help_text="A retry waits for its backoff.")
    output = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    cost = models.DecimalField(max_digits=24, decimal_places=8, default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["execution", "step_id"]
        constraints = [
            models.UniqueConstraint(fields=["execution", "step_id"], name="execution_step_unique"),
            models.CheckConstraint(condition=Q(status__in=StepStatus.values), name="execution_step_status_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.step_id} of {self.execution_id}"


class ExecutionEvent(models.Model):
    """The execution's log: a step queued, started, retried, finished, failed or cancelled."""

    execution = models.ForeignKey(Execution, on_delete=models.CASCADE, related_name="events")
    step_id = models.CharField(max_length=64, blank=True)
    kind = models.CharField(max_length=32)
    job_id = models.UUIDField(null=True, blank=True)
    message = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["execution", "created_at"], name="execution_event_idx")]

    def __str__(self) -> str:
        return f"{self.kind} {self.step_id}"
