import json

from django.conf import settings
from drf_spectacular.utils import OpenApiExample, extend_schema_serializer
from rest_framework import serializers

from agents.models import AgentStatus
from jobs.api.serializers import ReceiptDocumentSerializer


def _names(**kwargs):
    return serializers.ListField(
        child=serializers.CharField(max_length=64), max_length=64, required=False, default=list, **kwargs
    )


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "An agent",
            value={
                "agent_id": "hermes-agent",
                "agent_type": "worker",
                "capabilities": ["data-processing", "analysis"],
                "services": ["task-execution"],
                "endpoints": {"http": "http://localhost:9002"},
                "metadata": {"version": "1.0.0"},
            },
            request_only=True,
        )
    ]
)
class AgentRegisterSerializer(serializers.Serializer):
    agent_id = serializers.RegexField(r"^[^\s/]{1,120}$", max_length=120, help_text="No spaces or slashes")
    agent_type = serializers.CharField(max_length=64, help_text="worker, provider, consumer, general, …")
    capabilities = _names()
    services = _names()
    endpoints = serializers.DictField(child=serializers.CharField(max_length=2000), required=False, default=dict)
    metadata = serializers.DictField(required=False, default=dict)
    tags = _names()
    max_concurrent_tasks = serializers.IntegerField(
        min_value=1, max_value=1024, required=False, help_text="Tasks it runs at once (AGENT_MAX_CONCURRENT_TASKS)"
    )


class AgentRegisteredSerializer(serializers.Serializer):
    status = serializers.CharField(help_text="success")
    message = serializers.CharField()
    agent_id = serializers.CharField()
    registered_at = serializers.CharField()
    timestamp = serializers.CharField()


class AgentDiscoverSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=AgentStatus.choices, required=False)
    agent_type = serializers.CharField(max_length=64, required=False)
    capabilities = _names()
    services = _names()


class AgentInfoSerializer(serializers.Serializer):
    agent_id = serializers.CharField()
    agent_type = serializers.CharField()
    status = serializers.CharField()
    capabilities = serializers.ListField(child=serializers.CharField())
    services = serializers.ListField(child=serializers.CharField())
    endpoints = serializers.DictField(child=serializers.CharField())
    metadata = serializers.DictField()
    last_heartbeat = serializers.CharField()
    registration_time = serializers.CharField()
    load_metrics = serializers.DictField()
    health_score = serializers.FloatField(help_text="0 to 1, from heartbeat freshness and task outcomes")
    version = serializers.CharField()
    tags = serializers.ListField(child=serializers.CharField())
    weight = serializers.FloatField()
    running_tasks = serializers.IntegerField()
    tasks_completed = serializers.IntegerField()
    tasks_failed = serializers.IntegerField()


class AgentDiscoveredSerializer(serializers.Serializer):
    status = serializers.CharField()
    query = serializers.DictField()
    agents = AgentInfoSerializer(many=True)
    count = serializers.IntegerField()
    timestamp = serializers.CharField()


class AgentDetailSerializer(serializers.Serializer):
    status = serializers.CharField()
    agent = AgentInfoSerializer()
    timestamp = serializers.CharField()


class AgentStatusUpdateSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=AgentStatus.choices)
    load_metrics = serializers.DictField(required=False)


class AgentStatusUpdatedSerializer(serializers.Serializer):
    status = serializers.CharField()
    message = serializers.CharField()
    agent_id = serializers.CharField()
    new_status = serializers.CharField()
    updated_at = serializers.CharField()
    health_score = serializers.FloatField()
    load_metrics = serializers.DictField()
    timestamp = serializers.CharField()


class AgentHeartbeatSerializer(serializers.Serializer):
    load_metrics = serializers.DictField(required=False)


class AgentHeartbeatAcceptedSerializer(serializers.Serializer):
    status = serializers.CharField()
    message = serializers.CharField()
    agent_id = serializers.CharField()
    agent_status = serializers.CharField()
    health_score = serializers.FloatField()
    load_metrics = serializers.DictField()
    timestamp = serializers.CharField()


class AgentPollSerializer(serializers.Serializer):
    max_wait_seconds = serializers.FloatField(min_value=0, max_value=3600, required=False, default=0)
    max_tasks = serializers.IntegerField(min_value=1, max_value=64, required=False, default=1)


class TaskRequirementsSerializer(serializers.Serializer):
    capabilities = _names()
    agent_type = serializers.CharField(max_length=64, required=False, allow_blank=True)


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "A task",
            value={"task_data": {"model": "llama2", "prompt": "test prompt"}, "priority": "normal", "requirements": {}},
            request_only=True,
        )
    ]
)
class TaskSubmitSerializer(serializers.Serializer):
    task_data = serializers.DictField(help_text="task_type, model, prompt, parameters, … as the agent reads them")
    priority = serializers.JSONField(help_text="urgent, critical, high, normal or low; anything else is a 400")
    requirements = TaskRequirementsSerializer(required=False, default=dict)
    budget = serializers.DecimalField(
        max_digits=18,
        decimal_places=8,
        min_value=0,
        required=False,
        help_text="Held in escrow, paid to the agent's owner",
    )
    ttl_seconds = serializers.IntegerField(min_value=1, max_value=7 * 24 * 3600, required=False)

    def validate_task_data(self, task_data: dict) -> dict:
        size = len(json.dumps(task_data, ensure_ascii=False).encode())
        if size > settings.JOB_MAX_PAYLOAD_BYTES:
            raise serializers.ValidationError(f"At most {settings.JOB_MAX_PAYLOAD_BYTES} bytes of JSON.")
        return task_data


class TaskSubmittedSerializer(serializers.Serializer):
    status = serializers.CharField()
    message = serializers.CharField()
    task_id = serializers.CharField()
    priority = serializers.CharField()
    submitted_at = serializers.CharField()
    timestamp = serializers.CharField()


class AssignedTaskSerializer(serializers.Serializer):
    task_id = serializers.CharField()
    task_data = serializers.DictField()
    priority = serializers.CharField()
    requirements = serializers.DictField()
    attempt = serializers.IntegerField()
    lease_token = serializers.CharField(help_text="Send it back with the result")
    lease_expires_at = serializers.CharField()
    budget = serializers.CharField(allow_null=True)


class AssignedTasksSerializer(serializers.Serializer):
    status = serializers.CharField()
    agent_id = serializers.CharField()
    tasks = AssignedTaskSerializer(many=True)
    timestamp = serializers.CharField()


class TaskResultSerializer(serializers.Serializer):
    agent_id = serializers.CharField(max_length=120)
    result = serializers.JSONField(help_text="The task's output, any JSON")
    lease_token = serializers.CharField(max_length=64, required=False, allow_blank=True)


class TaskFailureSerializer(serializers.Serializer):
    agent_id = serializers.CharField(max_length=120)
    error = serializers.CharField(max_length=2000)
    lease_token = serializers.CharField(max_length=64, required=False, allow_blank=True)


class TaskReportedSerializer(serializers.Serializer):
    status = serializers.CharField()
    task_id = serializers.CharField()
    task_status = serializers.CharField()
    receipt = ReceiptDocumentSerializer(allow_null=True)
    timestamp = serializers.CharField()


class TaskInfoSerializer(serializers.Serializer):
    task_id = serializers.CharField()
    status = serializers.CharField(help_text="queued, assigned, running, completed, failed, cancelled or expired")
    priority = serializers.CharField()
    task_data = serializers.DictField()
    requirements = serializers.DictField()
    agent_id = serializers.CharField(allow_null=True)
    attempt = serializers.IntegerField()
    result = serializers.JSONField(allow_null=True)
    error = serializers.CharField(allow_null=True)
    budget = serializers.CharField(allow_null=True)
    payment_status = serializers.CharField()
    receipt = ReceiptDocumentSerializer(allow_null=True)
    submitted_at = serializers.CharField()
    completed_at = serializers.CharField(allow_null=True)


class TaskDetailSerializer(serializers.Serializer):
    status = serializers.CharField()
    task = TaskInfoSerializer()
    timestamp = serializers.CharField()


class QueueSizesSerializer(serializers.Serializer):
    urgent = serializers.IntegerField()
    critical = serializers.IntegerField()
    high = serializers.IntegerField()
    normal = serializers.IntegerField()
    low = serializers.IntegerField()


class LoadBalancerStatsSerializer(serializers.Serializer):
    strategy = serializers.CharField()
    total_assignments = serializers.IntegerField()
    successful_assignments = serializers.IntegerField()
    failed_assignments = serializers.IntegerField()
    success_rate = serializers.FloatField()
    active_agents = serializers.IntegerField()
    agent_weights = serializers.IntegerField()
    avg_agent_load = serializers.FloatField()


class DistributionStatsSerializer(serializers.Serializer):
    tasks_distributed = serializers.IntegerField()
    tasks_completed = serializers.IntegerField()
    tasks_failed = serializers.IntegerField()
    avg_distribution_time = serializers.FloatField(help_text="Seconds from submission to assignment, mean")
    load_balancer_stats = LoadBalancerStatsSerializer()
    queue_sizes = QueueSizesSerializer()


class TaskStatusSerializer(serializers.Serializer):
    status = serializers.CharField()
    stats = DistributionStatsSerializer()
    timestamp = serializers.CharField()


class QueuesSerializer(serializers.Serializer):
    status = serializers.CharField()
    queue_sizes = QueueSizesSerializer()
    total_queued = serializers.IntegerField()
    timestamp = serializers.CharField()


class QueueStatsSerializer(serializers.Serializer):
    status = serializers.CharField()
    queue_sizes = QueueSizesSerializer()
    total_queued = serializers.IntegerField()
    distribution = DistributionStatsSerializer()
    timestamp = serializers.CharField()


class QueueClearedSerializer(serializers.Serializer):
    status = serializers.CharField()
    message = serializers.CharField()
    priority = serializers.CharField()
    cleared = serializers.IntegerField(help_text="Tasks cancelled (and refunded)")
    timestamp = serializers.CharField()


BRIEF = {
    "name": "brief",
    "steps": {
        "facts": {
            "type": "inference",
            "model": "smollm2-135m",
            "prompt": "List facts about {{inputs.topic}}",
            "params": {"max_tokens": 40},
        },
        "poem": {"type": "inference", "model": "smollm2-135m", "prompt": "A poem about {{inputs.topic}}"},
        "merge": {
            "type": "inference",
            "model": "smollm2-135m",
            "prompt": "Combine: {{steps.facts.output}} {{steps.poem.output}}",
            "retries": 2,
            "timeout_seconds": 300,
        },
    },
    "dependencies": {"merge": ["facts", "poem"]},
}


@extend_schema_serializer(examples=[OpenApiExample("Fan-out, fan-in", value=BRIEF, request_only=True)])
class WorkflowWriteSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    description = serializers.CharField(max_length=10_000, required=False, allow_blank=True, default="")
    steps = serializers.DictField(
        help_text="Keyed by step id: {type: inference|chat|embedding|task, model, prompt, params, task_type, "
        "task_data, requirements, retries, timeout_seconds, budget}; prompts may name {{inputs.x}} and "
        "{{steps.<id>.output}}"
    )
    dependencies = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField(max_length=64)), required=False, default=dict
    )
    max_execution_time = serializers.IntegerField(min_value=1, max_value=7 * 24 * 3600, required=False, default=3600)
    max_cost_budget = serializers.DecimalField(
        max_digits=18, decimal_places=8, min_value=0, required=False, allow_null=True, default=None
    )
    requires_verification = serializers.BooleanField(required=False, default=False)
    verification_level = serializers.CharField(max_length=32, required=False, default="basic")
    tags = _names()
    is_public = serializers.BooleanField(required=False, default=False)


class WorkflowSerializer(serializers.Serializer):
    id = serializers.CharField()
    owner_id = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField()
    steps = serializers.DictField()
    dependencies = serializers.DictField()
    max_execution_time = serializers.IntegerField()
    max_cost_budget = serializers.CharField(allow_null=True)
    requires_verification = serializers.BooleanField()
    verification_level = serializers.CharField()
    tags = serializers.ListField(child=serializers.CharField())
    is_public = serializers.BooleanField()
    created_at = serializers.CharField()
    updated_at = serializers.CharField()


class ExecuteSerializer(serializers.Serializer):
    inputs = serializers.DictField(required=False, default=dict)
    max_cost_budget = serializers.DecimalField(
        max_digits=18, decimal_places=8, min_value=0, required=False, help_text="Overrides the workflow's"
    )
    max_execution_time = serializers.IntegerField(min_value=1, max_value=7 * 24 * 3600, required=False)


class StepStateSerializer(serializers.Serializer):
    status = serializers.CharField(help_text="waiting, running, completed, failed or cancelled")
    job_id = serializers.CharField(allow_null=True)
    attempts = serializers.IntegerField()
    output = serializers.JSONField(allow_null=True)
    error = serializers.CharField(allow_null=True)
    cost = serializers.CharField()
    started_at = serializers.CharField(allow_null=True)
    finished_at = serializers.CharField(allow_null=True)


class ExecutionSerializer(serializers.Serializer):
    execution_id = serializers.CharField()
    workflow_id = serializers.CharField(allow_null=True)
    status = serializers.CharField(help_text="running, completed, failed or cancelled")
    current_step = serializers.CharField(allow_null=True)
    running_steps = serializers.ListField(child=serializers.CharField())
    total_steps = serializers.IntegerField()
    completed_steps = serializers.IntegerField()
    step_states = serializers.DictField(child=StepStateSerializer())
    inputs = serializers.DictField()
    final_result = serializers.JSONField(allow_null=True)
    total_cost = serializers.CharField()
    budget = serializers.CharField(allow_null=True)
    error = serializers.CharField(allow_null=True)
    verification_proof = serializers.DictField(allow_null=True, help_text="The signed execution receipt")
    started_at = serializers.CharField()
    deadline = serializers.CharField()
    completed_at = serializers.CharField(allow_null=True)


class ExecutionLogSerializer(serializers.Serializer):
    timestamp = serializers.CharField()
    step_id = serializers.CharField(allow_null=True)
    event = serializers.CharField(
        help_text="started, queued, requeued, retried, finished, failed, cancelled, completed"
    )
    job_id = serializers.CharField(allow_null=True)
    message = serializers.CharField()


class ExecutionLogsSerializer(serializers.Serializer):
    execution_id = serializers.CharField()
    logs = ExecutionLogSerializer(many=True)


class ExecutionReceiptSerializer(serializers.Serializer):
    receipt = serializers.DictField(
        help_text="Signed: execution_id, steps (step_id, receipt_id, leaf_hash), merkle_root"
    )
    step_receipts = ReceiptDocumentSerializer(many=True)
