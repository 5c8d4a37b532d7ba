import json

from django.conf import settings
from drf_spectacular.utils import OpenApiExample, extend_schema_serializer
from rest_framework import serializers

from jobs.agreement import AGREEMENTS
from jobs.api.serializers import JobSubmitSerializer
from jobs.models import JobType
from miners.capabilities import AGENT_TASK_MODEL
from swarm.models import MemberPriority, MemberRole, ShareOutcome, Strategy, TaskStatus

# The original CLI's names for the strategies.
STRATEGY_ALIASES = {
    "consensus": Strategy.REDUNDANT,
    "distributed": Strategy.SPLIT,
    "leader-election": Strategy.BEST_OF,
    "best-of": Strategy.BEST_OF,
}
# Keys of a task object that make its jobs' payload.
TASK_JOB_FIELDS = ("prompt", "messages", "input", "model", "type", "params", "payment_amount")


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Join a new swarm",
            value={"role": "task-coordinator", "capability": "text-generation", "priority": "normal", "region": "eu"},
            request_only=True,
        )
    ]
)
class SwarmJoinSerializer(serializers.Serializer):
    swarm_id = serializers.UUIDField(required=False, help_text="A swarm to join; absent, a new swarm is started.")
    agent_id = serializers.CharField(
        required=False,
        max_length=120,
        help_text="Which of your agents joins (agent keys); miners name theirs with X-Miner-ID or miner_id.",
    )
    miner_id = serializers.CharField(required=False, max_length=128)
    role = serializers.ChoiceField(choices=MemberRole.choices)
    capability = serializers.CharField(required=False, allow_blank=True, max_length=100, default="")
    priority = serializers.ChoiceField(choices=MemberPriority.choices, required=False, default=MemberPriority.NORMAL)
    region = serializers.CharField(required=False, allow_blank=True, max_length=64, default="")


class SwarmLeaveSerializer(serializers.Serializer):
    agent_id = serializers.CharField(required=False, max_length=120)
    miner_id = serializers.CharField(required=False, max_length=128)


class SwarmMemberSerializer(serializers.Serializer):
    member_id = serializers.IntegerField()
    miner_id = serializers.CharField()
    agent_id = serializers.CharField(allow_null=True)
    role = serializers.ChoiceField(choices=MemberRole.choices)
    capability = serializers.CharField()
    priority = serializers.ChoiceField(choices=MemberPriority.choices)
    region = serializers.CharField()
    status = serializers.CharField(
        help_text="online, offline, draining, suspended, banned, maintenance (the miner's, live)"
    )
    joined_at = serializers.DateTimeField()


class SwarmJoinedSerializer(SwarmMemberSerializer):
    swarm_id = serializers.UUIDField()
    members = serializers.IntegerField(help_text="The swarm's current members")


class SwarmLeftSerializer(serializers.Serializer):
    swarm_id = serializers.UUIDField()
    status = serializers.CharField(default="left")
    left = serializers.ListField(child=serializers.CharField(), help_text="The miner ids that left")


class SwarmSerializer(serializers.Serializer):
    swarm_id = serializers.UUIDField()
    status = serializers.CharField(help_text="active (it has members) or inactive")
    created_at = serializers.DateTimeField()
    member_count = serializers.IntegerField()
    members = SwarmMemberSerializer(many=True)
    running_tasks = serializers.IntegerField()


class SwarmListSerializer(serializers.Serializer):
    swarms = SwarmSerializer(many=True)
    total = serializers.IntegerField()


class SwarmListQuerySerializer(serializers.Serializer):
    swarm_id = serializers.UUIDField(required=False)
    status = serializers.ChoiceField(choices=["active", "inactive"], required=False)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=100, default=20)


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Three members agree",
            value={
                "swarm_id": "6f1c9a52-8a43-4d6e-9a53-1f2d3c4b5a69",
                "task": {"prompt": "What is the capital of France?", "params": {"temperature": 0, "max_tokens": 16}},
                "collaborators": 3,
                "strategy": "redundant",
                "timeout_seconds": 600,
            },
            request_only=True,
        ),
        OpenApiExample(
            "A list split across members",
            value={
                "swarm_id": "6f1c9a52-8a43-4d6e-9a53-1f2d3c4b5a69",
                "task": {"model": "minilm-l6", "input": ["first", "second", "third"]},
                "collaborators": 3,
                "strategy": "split",
                "timeout_seconds": 600,
            },
            request_only=True,
        ),
    ]
)
class SwarmCoordinateSerializer(serializers.Serializer):
    swarm_id = serializers.UUIDField(
        required=False, help_text="Absent: the swarm with the most live members able to run the task."
    )
    task = serializers.JSONField(
        help_text="The job each share runs: a prompt (text), or an object with prompt, messages or input, model, "
        "type, params and payment_amount (each share's) as POST /v1/jobs takes them; for agents, task_data (an agent task) "
        "and payment_amount. split: input is the list cut into shares. best_of: judge is "
        '"client" (the default: POST …/choose) or the model that judges. redundant: agreement is exact (the default '
        "for text) or semantic (the default for embeddings)."
    )
    collaborators = serializers.IntegerField(min_value=1, max_value=settings.SWARM_MAX_COLLABORATORS, default=3)
    strategy = serializers.CharField(
        default=Strategy.REDUNDANT,
        help_text="redundant, split or best_of (the original CLI's consensus, distributed and leader-election).",
    )
    timeout_seconds = serializers.IntegerField(min_value=1, max_value=settings.JOB_MAX_TTL_SECONDS, default=3600)
    consensus_threshold = serializers.FloatField(
        required=False,
        min_value=0.01,
        max_value=1,
        help_text="redundant: the share of the collaborators that must agree (default SWARM_CONSENSUS_THRESHOLD).",
    )

    def validate_strategy(self, value):
        strategy = STRATEGY_ALIASES.get(value, value)
        if strategy not in Strategy.values:
            raise serializers.ValidationError("Must be one of redundant, split, best_of.")
        return strategy

    def validate(self, attrs):
        task = attrs["task"]
        if isinstance(task, str):
            task = {"prompt": task}
        if not isinstance(task, dict) or not task:
            raise serializers.ValidationError({"task": ["Must be a prompt or an object."]})
        strategy = attrs["strategy"]
        job = {k: v for k, v in task.items() if k in TASK_JOB_FIELDS}
        inputs = None
        if strategy == Strategy.SPLIT:
            inputs = job.get("input")
            if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) and i for i in inputs):
                raise serializers.ValidationError({"task": {"input": ["split needs a non-empty list of texts."]}})
            if len(inputs) > settings.SWARM_MAX_SPLIT_ITEMS:
                raise serializers.ValidationError(
                    {"task": {"input": [f"At most {settings.SWARM_MAX_SPLIT_ITEMS} items."]}}
                )
        if "task_data" in task:
            checked = _checked_agent_task(task)
        else:
            checked = _checked_split(job, inputs) if inputs else _checked(job)
        rule = task.get("agreement", "")
        if rule not in ("", *AGREEMENTS):
            raise serializers.ValidationError({"task": {"agreement": ["exact or semantic."]}})
        judge = ""
        if strategy == Strategy.BEST_OF:
            judge = task.get("judge", "client")
            if not isinstance(judge, str) or not judge.strip() or len(judge) > 200:
                raise serializers.ValidationError({"task": {"judge": ['"client" or a model name.']}})
        return {
            "swarm_id": attrs.get("swarm_id"),
            "strategy": strategy,
            "job_type": checked["job_type"],
            "model": checked["model"],
            "payload": checked["payload"],
            "inputs": inputs,
            "collaborators": attrs["collaborators"],
            "timeout_seconds": attrs["timeout_seconds"],
            "consensus_threshold": attrs.get("consensus_threshold"),
            "judge": judge.strip(),
            "spec": task,
            "payment_amount": checked["payment_amount"],
            "agreement_rule": rule,
        }


def _checked(job: dict) -> dict:
    """``job`` as ``POST /v1/jobs`` checks it; its errors are the task's."""
    checked = JobSubmitSerializer(data=job)
    if not checked.is_valid():
        raise serializers.ValidationError({"task": checked.errors})
    return checked.validated_data


def _checked_agent_task(task: dict) -> dict:
    """An agent task (``task_data``, as ``POST /tasks/submit`` takes it), for members that are agents."""
    data = task["task_data"]
    if not isinstance(data, dict):
        raise serializers.ValidationError({"task": {"task_data": ["Must be an object."]}})
    if len(json.dumps(data, ensure_ascii=False).encode()) > settings.JOB_MAX_PAYLOAD_BYTES:
        raise serializers.ValidationError({"task": {"task_data": [f"At most {settings.JOB_MAX_PAYLOAD_BYTES} bytes."]}})
    budget = serializers.DecimalField(max_digits=18, decimal_places=8, min_value=0, allow_null=True)
    try:
        payment = budget.run_validation(task.get("payment_amount"))
    except serializers.ValidationError as error:
        raise serializers.ValidationError({"task": {"payment_amount": error.detail}}) from None
    return {"job_type": JobType.TASK, "model": AGENT_TASK_MODEL, "payload": data, "payment_amount": payment}


def _checked_split(job: dict, inputs: list[str]) -> dict:
    """A split task's job, checked with its first item as its prompt (an embedding job's input); every
    item within the bounds of one job's text. Its payload is stored without the item."""
    too_long = [i for i, item in enumerate(inputs) if len(item) > settings.JOB_MAX_INPUT_CHARS]
    if too_long:
        raise serializers.ValidationError(
            {"task": {"input": [f"Items {too_long} are longer than {settings.JOB_MAX_INPUT_CHARS} characters."]}}
        )
    rest = {k: v for k, v in job.items() if k not in ("input", "prompt", "messages")}
    checked = _checked({**rest, "prompt": inputs[0]})
    payload = {k: v for k, v in checked["payload"].items() if k not in ("input", "prompt")}
    return {**checked, "payload": payload}


class SwarmCoordinatedSerializer(serializers.Serializer):
    task_id = serializers.UUIDField()
    swarm_id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=TaskStatus.choices)
    strategy = serializers.ChoiceField(choices=Strategy.choices)
    total_collaborators = serializers.IntegerField()
    shares = serializers.IntegerField()


class SwarmShareSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="The share's place (split: its item's position)")
    miner_id = serializers.CharField()
    agent_id = serializers.CharField(allow_null=True)
    role = serializers.CharField()
    job_id = serializers.UUIDField()
    job_status = serializers.CharField()
    outcome = serializers.ChoiceField(choices=ShareOutcome.choices)
    output = serializers.JSONField(allow_null=True, help_text="The member's answer, once in")


class SwarmTaskStatusSerializer(serializers.Serializer):
    task_id = serializers.UUIDField()
    swarm_id = serializers.UUIDField()
    strategy = serializers.ChoiceField(choices=Strategy.choices)
    status = serializers.ChoiceField(choices=TaskStatus.choices)
    progress = serializers.FloatField(help_text="Percent of the shares in")
    active_collaborators = serializers.IntegerField(help_text="Members whose share is queued or running")
    total_collaborators = serializers.IntegerField(help_text="Members holding a share now")
    members = SwarmShareSerializer(many=True, help_text="Every share, replaced ones included, with its outcome")
    output = serializers.JSONField(allow_null=True)
    error_code = serializers.CharField(allow_blank=True)
    error = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    deadline = serializers.DateTimeField()
    completed_at = serializers.DateTimeField(allow_null=True)


class SwarmConsensusQuerySerializer(serializers.Serializer):
    consensus_threshold = serializers.FloatField(
        required=False, min_value=0.01, max_value=1, help_text="Absent: the task's own."
    )


class SwarmConsensusSerializer(serializers.Serializer):
    task_id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=TaskStatus.choices)
    consensus_reached = serializers.BooleanField()
    consensus_threshold = serializers.FloatField()
    output = serializers.JSONField(allow_null=True, help_text="The agreed output")
    agreement = serializers.FloatField(allow_null=True, help_text="The agreeing share of the collaborators")
    agreeing = serializers.ListField(child=serializers.CharField(), help_text="Miner ids that agreed")
    dissenters = serializers.ListField(child=serializers.CharField(), help_text="Miner ids outvoted")


class SwarmChooseSerializer(serializers.Serializer):
    choice = serializers.IntegerField(min_value=0, help_text="The index of the winning answer among those given")
