"""The agent coordinator's API: the registry (``/agents/…``) and task distribution (``/tasks/…``),
in the original coordinator's shapes (``{"status": "success", …, "timestamp"}``)."""

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from agents import selectors, services
from agents.api.serializers import (
    AgentDetailSerializer,
    AgentDiscoveredSerializer,
    AgentDiscoverSerializer,
    AgentHeartbeatAcceptedSerializer,
    AgentHeartbeatSerializer,
    AgentPollSerializer,
    AgentRegisteredSerializer,
    AgentRegisterSerializer,
    AgentStatusUpdatedSerializer,
    AgentStatusUpdateSerializer,
    AssignedTaskSerializer,
    AssignedTasksSerializer,
    ExecuteSerializer,
    ExecutionLogsSerializer,
    ExecutionReceiptSerializer,
    ExecutionSerializer,
    QueueClearedSerializer,
    QueuesSerializer,
    QueueStatsSerializer,
    TaskDetailSerializer,
    TaskFailureSerializer,
    TaskReportedSerializer,
    TaskResultSerializer,
    TaskStatusSerializer,
    TaskSubmitSerializer,
    TaskSubmittedSerializer,
    WorkflowSerializer,
    WorkflowWriteSerializer,
)
from agents.models import Agent, Execution, Task, Workflow
from core.api.formats import iso_datetime, money_text
from core.api.permissions import ApiKeyScope, IsAdmin, IsAgent, is_admin, request_scope
from core.errors import ServiceError
from jobs.models import JobPriority

ERRORS = {
    401: OpenApiResponse(description="No or invalid API key"),
    403: OpenApiResponse(description="This key's scope does not allow it"),
    404: OpenApiResponse(description="No such agent or task"),
}
LEASE_CONFLICT = {409: OpenApiResponse(description="This agent does not hold the task's current lease")}
INVALID_PRIORITY = {400: OpenApiResponse(description="Invalid priority: …")}


class SubmitsTasks(BasePermission):
    """Clients submit tasks, and so do agents (handing work on to others)."""

    message = "This API key's scope does not allow this operation."

    def has_permission(self, request, view):
        return request_scope(request) in (ApiKeyScope.CLIENT, ApiKeyScope.AGENT, ApiKeyScope.ADMIN)


def now_text() -> str:
    return iso_datetime(timezone.now())


def agent_info(agent: Agent, *, now=None) -> dict:
    now = now or timezone.now()
    return {
        "agent_id": agent.agent_id,
        "agent_type": agent.agent_type,
        "status": selectors.effective_status(agent, now=now),
        "capabilities": agent.capabilities,
        "services": agent.services,
        "endpoints": agent.endpoints,
        "metadata": agent.metadata,
        "last_heartbeat": iso_datetime(agent.last_heartbeat_at),
        "registration_time": iso_datetime(agent.registered_at),
        "load_metrics": agent.load_metrics,
        "health_score": selectors.health_score(agent, now=now),
        "version": agent.version,
        "tags": agent.tags,
        "weight": agent.weight,
        "running_tasks": selectors.running_tasks(agent),
        "tasks_completed": agent.tasks_completed,
        "tasks_failed": agent.tasks_failed,
    }


def priority_label(value: int) -> str:
    return JobPriority(value).label


def task_requirements(task: Task) -> dict:
    requirements = {"capabilities": task.required_capabilities}
    if task.required_agent_type:
        requirements["agent_type"] = task.required_agent_type
    return requirements


def assigned_task(task: Task) -> dict:
    """A task as its agent receives it (a poll, the socket), its lease included."""
    return AssignedTaskSerializer(
        {
            "task_id": str(task.job_id),
            "task_data": task.job.payload,
            "priority": priority_label(task.job.priority),
            "requirements": task_requirements(task),
            "attempt": task.job.attempt,
            "lease_token": task.job.lease_token,
            "lease_expires_at": iso_datetime(task.job.lease_expires_at),
            "budget": money_text(task.job.price),
        }
    ).data


def receipt_document(job):
    receipt = job.receipts.first() if job.status == "completed" else None
    return receipt.document if receipt is not None else None


class AgentView(APIView):
    permission_classes = [IsAgent]

    def own_agent(self, agent_id: str) -> Agent:
        return selectors.agent_for_owner(owner=self.request.user, agent_id=agent_id, any_owner=is_admin(self.request))


class RegisterView(AgentView):
    @extend_schema(
        summary="Register (or re-register) an agent",
        request=AgentRegisterSerializer,
        responses={200: AgentRegisteredSerializer, 409: OpenApiResponse(description="agent_id taken"), **ERRORS},
    )
    def post(self, request):
        registration = AgentRegisterSerializer(data=request.data)
        registration.is_valid(raise_exception=True)
        data = registration.validated_data
        agent = services.agent_register(owner=request.user, **data)
        body = {
            "status": "success",
            "message": f"Agent {agent.agent_id} registered successfully",
            "agent_id": agent.agent_id,
            "registered_at": iso_datetime(agent.registered_at),
            "timestamp": now_text(),
        }
        return Response(AgentRegisteredSerializer(body).data)


class DiscoverView(APIView):
    @extend_schema(
        summary="Discover agents by status, type, capabilities and services",
        request=AgentDiscoverSerializer,
        responses={200: AgentDiscoveredSerializer, **ERRORS},
    )
    def post(self, request):
        query = AgentDiscoverSerializer(data=request.data)
        query.is_valid(raise_exception=True)
        agents = selectors.agents_discover(**query.validated_data)
        now = timezone.now()
        body = {
            "status": "success",
            # The query as asked, its fields the discovery reads (validated, so always JSON): the
            # rest of the body, which may hold anything JSON parses to (1e400 is infinity), is not echoed.
            "query": {name: request.data[name] for name in query.fields if name in request.data},
            "agents": [agent_info(agent, now=now) for agent in agents],
            "count": len(agents),
            "timestamp": now_text(),
        }
        return Response(AgentDiscoveredSerializer(body).data)


class AgentDetailView(APIView):
    @extend_schema(summary="An agent", responses={200: AgentDetailSerializer, **ERRORS})
    def get(self, request, agent_id):
        agent = selectors.agent_get(agent_id=agent_id)
        body = {"status": "success", "agent": agent_info(agent), "timestamp": now_text()}
        return Response(AgentDetailSerializer(body).data)


class AgentStatusView(AgentView):
    @extend_schema(
        summary="Update an agent's status and load metrics",
        request=AgentStatusUpdateSerializer,
        responses={200: AgentStatusUpdatedSerializer, **ERRORS},
    )
    def put(self, request, agent_id):
        update = AgentStatusUpdateSerializer(data=request.data)
        update.is_valid(raise_exception=True)
        agent = services.agent_update_status(
            agent=self.own_agent(agent_id),
            status=update.validated_data["status"],
            load_metrics=update.validated_data.get("load_metrics"),
        )
        body = {
            "status": "success",
            "message": f"Agent {agent.agent_id} status updated",
            "agent_id": agent.agent_id,
            "new_status": agent.status,
            "updated_at": iso_datetime(agent.updated_at),
            "health_score": selectors.health_score(agent),
            "load_metrics": agent.load_metrics,
            "timestamp": now_text(),
        }
        return Response(AgentStatusUpdatedSerializer(body).data)


class AgentHeartbeatView(AgentView):
    @extend_schema(
        summary="Heartbeat: the agent is alive (optionally with its load metrics)",
        request=AgentHeartbeatSerializer,
        responses={200: AgentHeartbeatAcceptedSerializer, **ERRORS},
    )
    def post(self, request, agent_id):
        heartbeat = AgentHeartbeatSerializer(data=request.data if isinstance(request.data, dict) else {})
        heartbeat.is_valid(raise_exception=True)
        agent = services.agent_heartbeat(
            agent=self.own_agent(agent_id), load_metrics=heartbeat.validated_data.get("load_metrics")
        )
        body = {
            "status": "success",
            "message": "Heartbeat received",
            "agent_id": agent.agent_id,
            "agent_status": selectors.effective_status(agent),
            "health_score": selectors.health_score(agent),
            "load_metrics": agent.load_metrics,
            "timestamp": now_text(),
        }
        return Response(AgentHeartbeatAcceptedSerializer(body).data)


class AgentPollView(AgentView):
    @extend_schema(
        summary="Receive the tasks assigned to this agent (long poll)",
        request=AgentPollSerializer,
        responses={
            200: AssignedTasksSerializer,
            204: OpenApiResponse(description="No task within max_wait_seconds"),
            **ERRORS,
        },
    )
    def post(self, request, agent_id):
        poll = AgentPollSerializer(data=request.data if isinstance(request.data, dict) else {})
        poll.is_valid(raise_exception=True)
        agent = self.own_agent(agent_id)
        wait = min(poll.validated_data["max_wait_seconds"], settings.AGENT_MAX_POLL_WAIT_SECONDS)
        tasks = services.agent_poll(agent=agent, limit=poll.validated_data["max_tasks"], wait_seconds=wait)
        if not tasks:
            return Response(status=status.HTTP_204_NO_CONTENT)
        body = {
            "status": "success",
            "agent_id": agent.agent_id,
            "tasks": [assigned_task(task) for task in tasks],
            "timestamp": now_text(),
        }
        return Response(AssignedTasksSerializer(body).data)


class TaskSubmitView(APIView):
    permission_classes = [SubmitsTasks]

    @extend_schema(
        summary="Submit a task for distribution to agents",
        request=TaskSubmitSerializer,
        responses={
            200: TaskSubmittedSerializer,
            **INVALID_PRIORITY,
            402: OpenApiResponse(description="Wallet short of the budget"),
            **ERRORS,
        },
    )
    def post(self, request):
        submitted = TaskSubmitSerializer(data=request.data)
        submitted.is_valid(raise_exception=True)
        data = submitted.validated_data
        task = services.task_submit(
            client=request.user,
            task_data=data["task_data"],
            priority=data["priority"],
            requirements=data["requirements"],
            budget=data.get("budget"),
            ttl_seconds=data.get("ttl_seconds"),
        )
        body = {
            "status": "success",
            "message": "Task submitted successfully",
            "task_id": str(task.job_id),
            "priority": data["priority"],
            "submitted_at": iso_datetime(task.job.created_at),
            "timestamp": now_text(),
        }
        return Response(TaskSubmittedSerializer(body).data)


class TaskStatusView(APIView):
    @extend_schema(summary="Task distribution figures", responses={200: TaskStatusSerializer, **ERRORS})
    def get(self, request):
        body = {"status": "success", "stats": selectors.distribution_stats(), "timestamp": now_text()}
        return Response(TaskStatusSerializer(body).data)


class QueuesView(APIView):
    @extend_schema(summary="Tasks waiting, by priority", responses={200: QueuesSerializer, **ERRORS})
    def get(self, request):
        sizes = selectors.queue_sizes()
        body = {"status": "success", "queue_sizes": sizes, "total_queued": sum(sizes.values()), "timestamp": now_text()}
        return Response(QueuesSerializer(body).data)


class QueueStatsView(APIView):
    @extend_schema(summary="Queue sizes and distribution figures", responses={200: QueueStatsSerializer, **ERRORS})
    def get(self, request):
        stats = selectors.distribution_stats()
        sizes = stats["queue_sizes"]
        body = {
            "status": "success",
            "queue_sizes": sizes,
            "total_queued": sum(sizes.values()),
            "distribution": stats,
            "timestamp": now_text(),
        }
        return Response(QueueStatsSerializer(body).data)


class QueueClearView(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(
        summary="Cancel every task waiting at a priority (refunding their budgets)",
        request=None,
        responses={200: QueueClearedSerializer, **INVALID_PRIORITY, **ERRORS},
    )
    def post(self, request, priority):
        cleared = services.tasks_clear_queue(priority=priority)
        body = {
            "status": "success",
            "message": f"Cleared {cleared} tasks from the {priority} queue",
            "priority": priority,
            "cleared": cleared,
            "timestamp": now_text(),
        }
        return Response(QueueClearedSerializer(body).data)


class TaskDetailView(APIView):
    @extend_schema(summary="A task's status and result", responses={200: TaskDetailSerializer, **ERRORS})
    def get(self, request, task_id):
        task = selectors.task_for_caller(task_id=task_id, user=request.user, is_admin=is_admin(request))
        job = task.job
        agent = getattr(job.miner, "agent", None) if job.miner_id else None
        result = job.result.get("output") if isinstance(job.result, dict) else job.result
        info = {
            "task_id": str(job.pk),
            "status": selectors.task_state(task),
            "priority": priority_label(job.priority),
            "task_data": job.payload,
            "requirements": task_requirements(task),
            "agent_id": agent.agent_id if agent is not None else None,
            "attempt": job.attempt,
            "result": result,
            "error": job.error_message or None,
            "budget": money_text(job.price),
            "payment_status": job.payment_status,
            "receipt": receipt_document(job),
            "submitted_at": iso_datetime(job.created_at),
            "completed_at": iso_datetime(job.completed_at),
        }
        return Response(TaskDetailSerializer({"status": "success", "task": info, "timestamp": now_text()}).data)


class TaskResultView(AgentView):
    @extend_schema(
        summary="Report a task's result",
        request=TaskResultSerializer,
        responses={200: TaskReportedSerializer, **LEASE_CONFLICT, **ERRORS},
    )
    def post(self, request, task_id):
        report = TaskResultSerializer(data=request.data)
        report.is_valid(raise_exception=True)
        data = report.validated_data
        completion = services.task_complete(
            agent=self.own_agent(data["agent_id"]),
            task_id=task_id,
            result=data["result"],
            lease_token=data.get("lease_token") or None,
        )
        return _task_reported(task_id, completion.job, receipt=completion.receipt)


class TaskFailView(AgentView):
    @extend_schema(
        summary="Report that a task failed (it goes to another attempt while attempts remain)",
        request=TaskFailureSerializer,
        responses={200: TaskReportedSerializer, **LEASE_CONFLICT, **ERRORS},
    )
    def post(self, request, task_id):
        report = TaskFailureSerializer(data=request.data)
        report.is_valid(raise_exception=True)
        data = report.validated_data
        job = services.task_fail(
            agent=self.own_agent(data["agent_id"]),
            task_id=task_id,
            error=data["error"],
            lease_token=data.get("lease_token") or None,
        )
        return _task_reported(task_id, job)


def _task_reported(task_id, job, *, receipt=None) -> Response:
    """The answer to a task's result or failure: the task's status now, and its receipt if any."""
    body = {
        "status": "success",
        "task_id": str(task_id),
        "task_status": job.status,
        "receipt": receipt.document if receipt else None,
        "timestamp": now_text(),
    }
    return Response(TaskReportedSerializer(body).data)


# --- Workflows and executions ------------------------------------------------------------


def workflow_view(workflow: Workflow) -> dict:
    return {
        "id": str(workflow.pk),
        "owner_id": workflow.owner_id,
        "name": workflow.name,
        "description": workflow.description,
        "steps": workflow.steps,
        "dependencies": workflow.dependencies,
        "max_execution_time": workflow.max_execution_time,
        "max_cost_budget": money_text(workflow.max_cost_budget),
        "requires_verification": workflow.requires_verification,
        "verification_level": workflow.verification_level,
        "tags": workflow.tags,
        "is_public": workflow.is_public,
        "created_at": iso_datetime(workflow.created_at),
        "updated_at": iso_datetime(workflow.updated_at),
    }


class WorkflowsView(APIView):
    permission_classes = [SubmitsTasks]

    @extend_schema(summary="My workflows and the public ones", responses={200: WorkflowSerializer(many=True), **ERRORS})
    def get(self, request):
        workflows = selectors.workflows_visible_to(user=request.user, is_admin=is_admin(request))[:500]
        return Response(WorkflowSerializer([workflow_view(w) for w in workflows], many=True).data)

    @extend_schema(
        summary="Create a workflow (a DAG of steps)",
        request=WorkflowWriteSerializer,
        responses={
            200: WorkflowSerializer,
            422: OpenApiResponse(description="A cycle, a dangling reference or an unknown model"),
            **ERRORS,
        },
    )
    def post(self, request):
        written = WorkflowWriteSerializer(data=request.data)
        written.is_valid(raise_exception=True)
        workflow = services.workflow_create(owner=request.user, **written.validated_data)
        return Response(WorkflowSerializer(workflow_view(workflow)).data)


class WorkflowBase(APIView):
    permission_classes = [SubmitsTasks]

    def workflow(self, workflow_id, *, to_change: bool = False) -> Workflow:
        return selectors.workflow_for(
            user=self.request.user, workflow_id=workflow_id, is_admin=is_admin(self.request), to_change=to_change
        )


class WorkflowDetailView(WorkflowBase):
    @extend_schema(summary="A workflow", responses={200: WorkflowSerializer, **ERRORS})
    def get(self, request, workflow_id):
        return Response(WorkflowSerializer(workflow_view(self.workflow(workflow_id))).data)

    @extend_schema(
        summary="Change a workflow (the fields sent)",
        request=WorkflowWriteSerializer,
        responses={200: WorkflowSerializer, **ERRORS},
    )
    def put(self, request, workflow_id):
        workflow = self.workflow(workflow_id, to_change=True)
        written = WorkflowWriteSerializer(data=request.data, partial=True)
        written.is_valid(raise_exception=True)
        workflow = services.workflow_update(workflow=workflow, **written.validated_data)
        return Response(WorkflowSerializer(workflow_view(workflow)).data)

    @extend_schema(summary="Delete a workflow (its executions stay)", responses={204: None, **ERRORS})
    def delete(self, request, workflow_id):
        services.workflow_delete(workflow=self.workflow(workflow_id, to_change=True))
        return Response(status=status.HTTP_204_NO_CONTENT)


class WorkflowExecuteView(WorkflowBase):
    @extend_schema(
        summary="Execute a workflow",
        request=ExecuteSerializer,
        responses={200: ExecutionSerializer, 402: OpenApiResponse(description="Wallet short of the budget"), **ERRORS},
    )
    def post(self, request, workflow_id):
        workflow = self.workflow(workflow_id)
        execute = ExecuteSerializer(data=request.data if isinstance(request.data, dict) else {})
        execute.is_valid(raise_exception=True)
        execution = services.workflow_execute(workflow=workflow, client=request.user, **execute.validated_data)
        execution.refresh_from_db()
        return Response(ExecutionSerializer(selectors.execution_view(execution)).data)


class ExecutionsView(APIView):
    permission_classes = [SubmitsTasks]

    @extend_schema(summary="My executions", responses={200: ExecutionSerializer(many=True), **ERRORS})
    def get(self, request):
        executions = selectors.executions_visible_to(user=request.user, is_admin=is_admin(request))[:100]
        return Response(ExecutionSerializer([selectors.execution_view(e) for e in executions], many=True).data)


class ExecutionBase(APIView):
    permission_classes = [SubmitsTasks]

    def execution(self, execution_id) -> Execution:
        return selectors.execution_for(
            user=self.request.user, execution_id=execution_id, is_admin=is_admin(self.request)
        )


class ExecutionView(ExecutionBase):
    @extend_schema(summary="An execution and its steps", responses={200: ExecutionSerializer, **ERRORS})
    def get(self, request, execution_id):
        return Response(ExecutionSerializer(selectors.execution_view(self.execution(execution_id))).data)


class ExecutionCancelView(ExecutionBase):
    @extend_schema(
        summary="Cancel an execution (running steps are cancelled and refunded)",
        request=None,
        responses={200: ExecutionSerializer, 409: OpenApiResponse(description="Already ended"), **ERRORS},
    )
    def post(self, request, execution_id):
        execution = services.execution_cancel(execution=self.execution(execution_id))
        return Response(ExecutionSerializer(selectors.execution_view(execution)).data)


class ExecutionLogsView(ExecutionBase):
    @extend_schema(summary="An execution's log", responses={200: ExecutionLogsSerializer, **ERRORS})
    def get(self, request, execution_id):
        execution = self.execution(execution_id)
        logs = [
            {
                "timestamp": iso_datetime(event.created_at),
                "step_id": event.step_id or None,
                "event": event.kind,
                "job_id": str(event.job_id) if event.job_id else None,
                "message": event.message,
            }
            for event in execution.events.all()
        ]
        return Response(ExecutionLogsSerializer({"execution_id": str(execution.pk), "logs": logs}).data)


class ExecutionReceiptView(ExecutionBase):
    @extend_schema(
        summary="An execution's receipt: a signed Merkle root over its steps' receipts",
        responses={200: ExecutionReceiptSerializer, 425: OpenApiResponse(description="Not completed"), **ERRORS},
    )
    def get(self, request, execution_id):
        execution = self.execution(execution_id)
        if not execution.receipt:
            raise ServiceError(
                f"The execution is {execution.status}; only a completed one has a receipt.",
                code="EXECUTION_NOT_COMPLETED",
                status_code=425,
            )
        return Response(execution.receipt)
