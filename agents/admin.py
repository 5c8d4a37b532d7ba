from django.contrib import admin, messages

from agents import selectors, services
from agents.models import Agent, Execution, ExecutionEvent, ExecutionStep, Task, Workflow
from core.admin_bases import ReadOnlyAdmin, ReadOnlyInline
from core.errors import ServiceError


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    """Staff set an agent's weight here (the only field they edit), ban and unban it."""

    list_display = (
        "agent_id", "agent_type", "status", "owner", "weight", "assignments", "tasks_completed", "tasks_failed",
        "health", "last_heartbeat_at", "banned_at",
    )  # fmt: skip
    list_filter = ("status", "agent_type", ("banned_at", admin.EmptyFieldListFilter))
    search_fields = ("agent_id", "owner__username", "agent_type")
    list_select_related = ("owner", "miner")
    ordering = ("agent_id",)
    actions = ["ban_agents", "unban_agents"]
    fields = (
        "agent_id", "owner", "miner", "agent_type", "status", "weight", "capabilities", "services", "endpoints",
        "metadata", "version", "tags", "load_metrics", "assignments", "tasks_completed", "tasks_failed",
        "banned_at", "registered_at", "last_heartbeat_at", "updated_at",
    )  # fmt: skip
    readonly_fields = tuple(name for name in fields if name != "weight")

    def has_add_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="health")
    def health(self, agent: Agent) -> float:
        return selectors.health_score(agent)

    def save_model(self, request, obj, form, change):
        try:
            services.agent_set_weight(agent=obj, weight=form.cleaned_data["weight"])
        except ServiceError as error:
            self.message_user(request, error.detail, messages.ERROR)

    @admin.action(description="Ban selected agents (their tasks go to others)")
    def ban_agents(self, request, queryset):
        released = sum(services.agent_ban(agent=agent) for agent in queryset.select_related("miner"))
        self.message_user(request, f"Banned {queryset.count()} agent(s); {released} task(s) went back to the queue.")

    @admin.action(description="Unban selected agents")
    def unban_agents(self, request, queryset):
        for agent in queryset:
            services.agent_unban(agent=agent)
        self.message_user(request, f"Unbanned {queryset.count()} agent(s).")


@admin.register(Task)
class TaskAdmin(ReadOnlyAdmin):
    list_display = ("job", "task_type", "status", "priority", "client", "agent", "attempt", "created_at")
    list_filter = ("job__status", "job__priority", "task_type")
    search_fields = ("=job__id", "task_type", "job__client__username", "job__miner__miner_id")
    list_select_related = ("job", "job__client", "job__miner__agent")
    ordering = ("-job__created_at",)
    actions = ["cancel_tasks"]
    fields = ("job", "task_type", "required_capabilities", "required_agent_type", "delivered_attempt")

    @admin.display(description="status")
    def status(self, task: Task) -> str:
        return selectors.task_state(task)

    @admin.display(description="priority")
    def priority(self, task: Task) -> str:
        return task.job.get_priority_display()

    @admin.display(description="client")
    def client(self, task: Task):
        return task.job.client

    @admin.display(description="agent")
    def agent(self, task: Task):
        miner = task.job.miner
        return getattr(miner, "agent", None) if miner is not None else None

    @admin.display(description="attempt")
    def attempt(self, task: Task) -> int:
        return task.job.attempt

    @admin.display(description="submitted")
    def created_at(self, task: Task):
        return task.job.created_at

    @admin.action(description="Cancel selected tasks (refunding their budgets)")
    def cancel_tasks(self, request, queryset):
        cancelled = 0
        for task in queryset:
            try:
                services.task_cancel(task_id=task.pk)
                cancelled += 1
            except ServiceError as error:
                self.message_user(request, f"{task}: {error.detail}", messages.WARNING)
        self.message_user(request, f"Cancelled {cancelled} task(s).")


@admin.register(Workflow)
class WorkflowAdmin(ReadOnlyAdmin):
    list_display = ("name", "owner", "is_public", "max_cost_budget", "max_execution_time", "created_at")
    list_filter = ("is_public", "requires_verification")
    search_fields = ("=id", "name", "owner__username")
    list_select_related = ("owner",)
    ordering = ("-created_at",)


class ExecutionStepInline(ReadOnlyInline):
    model = ExecutionStep
    fields = ("step_id", "status", "job", "attempts", "cost", "error", "started_at", "finished_at")


class ExecutionEventInline(ReadOnlyInline):
    model = ExecutionEvent
    fields = ("created_at", "step_id", "kind", "job_id", "message")


@admin.register(Execution)
class ExecutionAdmin(ReadOnlyAdmin):
    list_display = ("id", "workflow", "client", "status", "total_cost", "budget", "started_at", "completed_at")
    list_filter = ("status",)
    search_fields = ("=id", "workflow__name", "client__username")
    list_select_related = ("workflow", "client")
    ordering = ("-started_at",)
    inlines = [ExecutionStepInline, ExecutionEventInline]
    actions = ["cancel_executions"]

    @admin.action(description="Cancel selected executions (running steps are cancelled and refunded)")
    def cancel_executions(self, request, queryset):
        cancelled = 0
        for execution in queryset:
            try:
                services.execution_cancel(execution=execution)
                cancelled += 1
            except ServiceError as error:
                self.message_user(request, f"{execution}: {error.detail}", messages.WARNING)
        self.message_user(request, f"Cancelled {cancelled} execution(s).")
