import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Swarm(models.Model):
    """A group of miners and agents that take coordinated tasks together. It is started by the first
    member to join, and lives on while it has members."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="swarms")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"swarm {self.id}"


class MemberRole(models.TextChoices):
    LOAD_BALANCER = "load-balancer", "Load balancer"
    RESOURCE_OPTIMIZER = "resource-optimizer", "Resource optimizer"
    TASK_COORDINATOR = "task-coordinator", "Task coordinator"
    MONITOR = "monitor", "Monitor"


class MemberPriority(models.TextChoices):
    LOW = "low", "Low"
    NORMAL = "normal", "Normal"
    HIGH = "high", "High"


class SwarmMember(models.Model):
    """A miner (or an agent, through its miner) in a swarm. Leaving keeps the row, ended, for the
    shares it ran; a member who joins again gets a new one."""

    swarm = models.ForeignKey(Swarm, on_delete=models.CASCADE, related_name="members")
    miner = models.ForeignKey("miners.Miner", on_delete=models.PROTECT, related_name="swarm_memberships")
    agent = models.ForeignKey(
        "agents.Agent", on_delete=models.PROTECT, null=True, blank=True, related_name="swarm_memberships"
    )
    role = models.CharField(max_length=32, choices=MemberRole.choices)
    capability = models.CharField(max_length=100, blank=True)
    priority = models.CharField(max_length=8, choices=MemberPriority.choices, default=MemberPriority.NORMAL)
    region = models.CharField(max_length=64, blank=True)
    joined_at = models.DateTimeField(default=timezone.now)
    left_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["joined_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["swarm", "miner"], condition=Q(left_at__isnull=True), name="swarm_member_once"
            ),
            models.CheckConstraint(condition=Q(role__in=MemberRole.values), name="swarm_member_role_valid"),
            models.CheckConstraint(condition=Q(priority__in=MemberPriority.values), name="swarm_member_priority_valid"),
        ]
        indexes = [models.Index(fields=["miner"], condition=Q(left_at__isnull=True), name="swarm_member_live_idx")]

    def __str__(self) -> str:
        return f"{self.miner_id} in {self.swarm_id}"


class Strategy(models.TextChoices):
    REDUNDANT = "redundant", "Redundant (the answer a threshold agree on)"
    SPLIT = "split", "Split (a list partitioned across members)"
    BEST_OF = "best_of", "Best of n (a judge picks)"


class TaskStatus(models.TextChoices):
    RUNNING = "running", "Running"
    AWAITING_JUDGEMENT = "awaiting_judgement", "Awaiting the client's choice"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


TaskStatus.ACTIVE = (TaskStatus.RUNNING, TaskStatus.AWAITING_JUDGEMENT)
TaskStatus.TERMINAL = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


class SwarmTask(models.Model):
    """A coordinated task: its shares are jobs, each pinned to one member. Whoever advances it
    (``task_advance``) locks this row."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    swarm = models.ForeignKey(Swarm, on_delete=models.PROTECT, related_name="tasks")
    client = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="swarm_tasks")
    strategy = models.CharField(max_length=16, choices=Strategy.choices)
    task = models.JSONField(help_text="As the client sent it.")
    job_type = models.CharField(max_length=16)
    model = models.CharField(max_length=200)
    payload = models.JSONField(help_text="Each share's job payload (split: without its input).")
    inputs = models.JSONField(null=True, blank=True, help_text="Split: the list cut into shares, in order.")
    collaborators = models.PositiveSmallIntegerField()
    share_payment = models.DecimalField(
        max_digits=24, decimal_places=8, null=True, blank=True, help_text="What each share's job holds in escrow."
    )
    consensus_threshold = models.FloatField(default=0.5)
    agreement_rule = models.CharField(
        max_length=16, default="exact", help_text="Redundant: exact (text) or semantic (embeddings: cosine)."
    )
    judge = models.CharField(max_length=200, blank=True, help_text="Best of n: 'client', or the judging model.")
    judge_job = models.OneToOneField(
        "jobs.Job", on_delete=models.PROTECT, null=True, blank=True, related_name="swarm_judged"
    )
    status = models.CharField(max_length=20, choices=TaskStatus.choices, default=TaskStatus.RUNNING)
    output = models.JSONField(null=True, blank=True)
    agreement = models.FloatField(null=True, blank=True, help_text="Redundant: the agreeing share of the answers.")
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    timeout_seconds = models.PositiveIntegerField()
    deadline = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    completed_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(strategy__in=Strategy.values), name="swarm_task_strategy_valid"),
            models.CheckConstraint(condition=Q(status__in=TaskStatus.values), name="swarm_task_status_valid"),
            models.CheckConstraint(
                condition=Q(consensus_threshold__gt=0, consensus_threshold__lte=1), name="swarm_task_threshold_range"
            ),
        ]
        indexes = [
            models.Index(fields=["client", "-created_at"], name="swarm_task_client_idx"),
            models.Index(
                fields=["deadline"],
                condition=Q(status__in=["running", "awaiting_judgement"]),
                name="swarm_task_active_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.strategy} task {self.id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TaskStatus.TERMINAL


class ShareOutcome(models.TextChoices):
    PENDING = "pending", "Pending"
    ANSWERED = "answered", "Answered"
    AGREED = "agreed", "Agreed"
    OUTVOTED = "outvoted", "Outvoted"
    CHOSEN = "chosen", "Chosen"
    NOT_CHOSEN = "not_chosen", "Not chosen"
    REPLACED = "replaced", "Replaced"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


class SwarmShare(models.Model):
    """One member's part of a task: a job pinned to it. ``index`` is the share's place (split: the
    position of its input); a member that goes silent is replaced by a new share at the same place."""

    task = models.ForeignKey(SwarmTask, on_delete=models.CASCADE, related_name="shares")
    index = models.PositiveIntegerField()
    member = models.ForeignKey(SwarmMember, on_delete=models.PROTECT, related_name="shares")
    job = models.OneToOneField("jobs.Job", on_delete=models.PROTECT, related_name="swarm_share")
    outcome = models.CharField(max_length=16, choices=ShareOutcome.choices, default=ShareOutcome.PENDING)
    created_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["task", "index", "created_at", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(outcome__in=ShareOutcome.values), name="swarm_share_outcome_valid"),
            models.UniqueConstraint(
                fields=["task", "index"], condition=~Q(outcome="replaced"), name="swarm_share_one_current"
            ),
        ]

    def __str__(self) -> str:
        return f"share {self.index} of {self.task_id}"
