"""The swarm API: membership (miners and agents join and leave), the list, and coordinated tasks
(clients start them, follow their status, read their consensus, and judge best-of tasks)."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from agents import selectors as agent_selectors
from core.api.formats import iso_datetime
from core.api.permissions import ApiKeyScope, IsClient, is_admin, request_scope
from core.errors import Conflict, Invalid, NotFound
from miners import selectors as miner_selectors
from miners import services as miner_services
from miners.api.views import MINER_ID_HEADER
from miners.models import Miner
from swarm import selectors, services
from swarm.api.serializers import (
    SwarmChooseSerializer,
    SwarmConsensusQuerySerializer,
    SwarmConsensusSerializer,
    SwarmCoordinatedSerializer,
    SwarmCoordinateSerializer,
    SwarmJoinedSerializer,
    SwarmJoinSerializer,
    SwarmLeaveSerializer,
    SwarmLeftSerializer,
    SwarmListQuerySerializer,
    SwarmListSerializer,
    SwarmTaskStatusSerializer,
)
from swarm.models import Strategy, SwarmMember, SwarmTask

ERRORS = {
    401: OpenApiResponse(description="No or invalid API key"),
    403: OpenApiResponse(description="This key's scope does not allow it"),
    404: OpenApiResponse(description="No such swarm, member or task (or not yours)"),
}


class IsMinerOrAgent(BasePermission):
    """Members are miners and agents: their keys (and admin keys) join and leave."""

    message = "Only miner and agent keys join or leave swarms."

    def has_permission(self, request, view):
        return request_scope(request) in (ApiKeyScope.MINER, ApiKeyScope.AGENT, ApiKeyScope.ADMIN)


def member_view(member: SwarmMember) -> dict:
    return {
        "member_id": member.pk,
        "miner_id": member.miner.miner_id,
        "agent_id": member.agent.agent_id if member.agent_id else None,
        "role": member.role,
        "capability": member.capability,
        "priority": member.priority,
        "region": member.region,
        "status": selectors.member_status(member.miner),
        "joined_at": iso_datetime(member.joined_at),
    }


class MemberView(APIView):
    """A view that speaks for one of the caller's miners or agents."""

    permission_classes = [IsMinerOrAgent]

    def speaker(self, data: dict, *, required: bool = True):
        """The caller's agent (``agent_id``) or miner (``X-Miner-ID``, ``miner_id``, else the key
        owner's name) as ``(miner, agent)``; None when nothing is named and ``required`` is False."""
        request = self.request
        admin = is_admin(request)
        agent_id = data.get("agent_id")
        if agent_id or request_scope(request) == ApiKeyScope.AGENT:
            if not agent_id and not required:
                return None
            if not agent_id:
                raise Invalid("Name the agent: agent_id.", code="VALIDATION_ERROR", errors={"agent_id": ["Required."]})
            agent = agent_selectors.agent_for_owner(owner=request.user, agent_id=agent_id, any_owner=admin)
            if agent.banned_at:
                raise NotFound("Agent not found", code="AGENT_NOT_FOUND")
            return agent.miner, agent
        miner_id = request.headers.get("X-Miner-ID") or data.get("miner_id") or request.query_params.get("miner_id")
        if not miner_id and not required:
            return None
        miner = miner_selectors.miner_for_owner(
            owner=request.user, miner_id=str(miner_id or request.user.username), any_owner=admin
        )
        if not admin:
            miner_services.miner_refusal_check(miner=miner)
        return miner, None


class JoinView(MemberView):
    @extend_schema(
        summary="Join a swarm (or start one)",
        request=SwarmJoinSerializer,
        parameters=[MINER_ID_HEADER],
        responses={201: SwarmJoinedSerializer, 422: OpenApiResponse(description="Invalid body"), **ERRORS},
    )
    def post(self, request):
        join = SwarmJoinSerializer(data=request.data)
        join.is_valid(raise_exception=True)
        data = join.validated_data
        miner, agent = self.speaker(data)
        member, _ = services.member_join(
            miner=miner,
            agent=agent,
            swarm_id=data.get("swarm_id"),
            role=data["role"],
            capability=data["capability"],
            priority=data["priority"],
            region=data["region"],
        )
        count = SwarmMember.objects.filter(swarm=member.swarm_id, left_at__isnull=True).count()
        body = {**member_view(member), "swarm_id": member.swarm_id, "members": count}
        return Response(SwarmJoinedSerializer(body).data, status=status.HTTP_201_CREATED)


class LeaveView(MemberView):
    @extend_schema(
        summary="Leave a swarm",
        request=SwarmLeaveSerializer,
        parameters=[MINER_ID_HEADER],
        responses={200: SwarmLeftSerializer, **ERRORS},
    )
    def post(self, request, swarm_id):
        leave = SwarmLeaveSerializer(data=request.data if isinstance(request.data, dict) else {})
        leave.is_valid(raise_exception=True)
        named = self.speaker(leave.validated_data, required=False)
        if named is not None:
            miners = [named[0]]
        elif is_admin(request):
            raise Invalid("Name the member: miner_id or agent_id.", code="VALIDATION_ERROR")
        else:
            # Naming none: every miner (agents included) of the caller in the swarm leaves.
            miners = list(Miner.objects.filter(owner=request.user))
        members = services.member_leave(swarm_id=swarm_id, miners=miners)
        body = {"swarm_id": swarm_id, "status": "left", "left": [m.miner.miner_id for m in members]}
        return Response(SwarmLeftSerializer(body).data)


class ListView(APIView):
    @extend_schema(
        summary="List swarms, with their members, roles and live status",
        parameters=[SwarmListQuerySerializer],
        responses={200: SwarmListSerializer, 422: OpenApiResponse(description="Invalid query"), **ERRORS},
    )
    def get(self, request):
        query = SwarmListQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        swarms = selectors.swarms_listed(swarm_id=data.get("swarm_id"), status=data.get("status"))
        page = list(swarms[: data["limit"]])
        body = {
            "swarms": [
                {
                    "swarm_id": swarm.pk,
                    "status": "active" if swarm.member_count else "inactive",
                    "created_at": iso_datetime(swarm.created_at),
                    "member_count": swarm.member_count,
                    "members": [member_view(member) for member in swarm.current_members],
                    "running_tasks": swarm.running_tasks,
                }
                for swarm in page
            ],
            "total": swarms.count(),
        }
        return Response(SwarmListSerializer(body).data)


class CoordinateView(APIView):
    permission_classes = [IsClient]

    @extend_schema(
        summary="Start a coordinated task",
        request=SwarmCoordinateSerializer,
        responses={
            202: SwarmCoordinatedSerializer,
            402: OpenApiResponse(description="Wallet short of the shares' price"),
            409: OpenApiResponse(description="Not enough live members able to run it (NOT_ENOUGH_MEMBERS)"),
            422: OpenApiResponse(
                description="Invalid task (VALIDATION_ERROR; UNKNOWN_MODEL for a model the platform does not know)"
            ),
            **ERRORS,
        },
    )
    def post(self, request):
        coordinate = SwarmCoordinateSerializer(data=request.data)
        coordinate.is_valid(raise_exception=True)
        data = dict(coordinate.validated_data)
        swarm_id = data.pop("swarm_id")
        services.model_check(model=data["model"], job_type=data["job_type"])
        if swarm_id is not None:
            swarm = selectors.swarm_get(swarm_id=swarm_id)
        else:
            swarm = selectors.swarm_for_model(model=data["model"])
            if swarm is None:
                raise NotFound(f"No swarm has a live member able to run {data['model']}.", code="SWARM_NOT_FOUND")
        task = services.task_coordinate(client=request.user, swarm=swarm, **data)
        body = {
            "task_id": task.pk,
            "swarm_id": swarm.pk,
            "status": task.status,
            "strategy": task.strategy,
            "total_collaborators": task.collaborators,
            "shares": task.shares.count(),
        }
        return Response(SwarmCoordinatedSerializer(body).data, status=status.HTTP_202_ACCEPTED)


class TaskView(APIView):
    permission_classes = [IsClient]

    def task(self, task_id) -> SwarmTask:
        return selectors.task_for(user=self.request.user, task_id=task_id, is_admin=is_admin(self.request))


def task_status(task: SwarmTask) -> dict:
    shares = selectors.shares_of(task)
    return {
        "task_id": task.pk,
        "swarm_id": task.swarm_id,
        "strategy": task.strategy,
        "status": task.status,
        **selectors.task_figures(task, shares),
        "members": [selectors.share_view(share) for share in shares],
        "output": task.output,
        "error_code": task.error_code,
        "error": task.error_message or None,
        "created_at": iso_datetime(task.created_at),
        "deadline": iso_datetime(task.deadline),
        "completed_at": iso_datetime(task.completed_at),
    }


class TaskStatusView(TaskView):
    @extend_schema(summary="A coordinated task's status", responses={200: SwarmTaskStatusSerializer, **ERRORS})
    def get(self, request, task_id):
        return Response(SwarmTaskStatusSerializer(task_status(self.task(task_id))).data)


class ConsensusView(TaskView):
    @extend_schema(
        summary="A redundant task's consensus",
        request=SwarmConsensusQuerySerializer,
        responses={
            200: SwarmConsensusSerializer,
            409: OpenApiResponse(description="Not a redundant task"),
            422: OpenApiResponse(description="Invalid threshold"),
            **ERRORS,
        },
    )
    def post(self, request, task_id):
        query = SwarmConsensusQuerySerializer(data=request.data if isinstance(request.data, dict) else {})
        query.is_valid(raise_exception=True)
        task = self.task(task_id)
        if task.strategy != Strategy.REDUNDANT:
            raise Conflict(f"A {task.strategy} task has no consensus: only redundant tasks vote.", code="NOT_REDUNDANT")
        threshold = query.validated_data.get("consensus_threshold", task.consensus_threshold)
        body = selectors.consensus(task, selectors.shares_of(task), threshold=threshold)
        return Response(SwarmConsensusSerializer(body).data)


class ChooseView(TaskView):
    @extend_schema(
        summary="Judge a best-of task: choose the winning answer",
        request=SwarmChooseSerializer,
        responses={
            200: SwarmTaskStatusSerializer,
            409: OpenApiResponse(description="Not a client-judged best-of task awaiting a choice"),
            422: OpenApiResponse(description="No such answer"),
            **ERRORS,
        },
    )
    def post(self, request, task_id):
        choose = SwarmChooseSerializer(data=request.data)
        choose.is_valid(raise_exception=True)
        task = services.task_choose(task=self.task(task_id), index=choose.validated_data["choice"])
        return Response(SwarmTaskStatusSerializer(task_status(task)).data)


class CancelView(TaskView):
    @extend_schema(
        summary="Cancel a coordinated task",
        request=None,
        responses={200: SwarmTaskStatusSerializer, 409: OpenApiResponse(description="Already ended"), **ERRORS},
    )
    def post(self, request, task_id):
        task = services.task_cancel(task=self.task(task_id))
        return Response(SwarmTaskStatusSerializer(task_status(task)).data)
