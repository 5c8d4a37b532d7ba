from django.urls import path

from agents.api import views

AGENT_PREFIXES = ("agents/", "v1/agents/", "api/v1/agents/")
TASK_PREFIXES = ("tasks/", "v1/tasks/")


def _named(prefix: str, name: str) -> str:
    return f"{prefix.strip('/').replace('/', '-')}-{name}"


urlpatterns = []
# Before the agents' routes: v1/agents/<agent_id> would otherwise take v1/agents/workflows.
for prefix in ("v1/agents/", "api/v1/agents/"):
    urlpatterns += [
        path(f"{prefix}workflows", views.WorkflowsView.as_view(), name=_named(prefix, "workflows")),
        path(
            f"{prefix}workflows/<uuid:workflow_id>", views.WorkflowDetailView.as_view(), name=_named(prefix, "workflow")
        ),
        path(
            f"{prefix}workflows/<uuid:workflow_id>/execute",
            views.WorkflowExecuteView.as_view(),
            name=_named(prefix, "workflow-execute"),
        ),
        path(f"{prefix}executions", views.ExecutionsView.as_view(), name=_named(prefix, "executions")),
        path(
            f"{prefix}executions/<uuid:execution_id>", views.ExecutionView.as_view(), name=_named(prefix, "execution")
        ),
        path(
            f"{prefix}executions/<uuid:execution_id>/status",
            views.ExecutionView.as_view(),
            name=_named(prefix, "execution-status"),
        ),
        path(
            f"{prefix}executions/<uuid:execution_id>/cancel",
            views.ExecutionCancelView.as_view(),
            name=_named(prefix, "execution-cancel"),
        ),
        path(
            f"{prefix}executions/<uuid:execution_id>/logs",
            views.ExecutionLogsView.as_view(),
            name=_named(prefix, "execution-logs"),
        ),
        path(
            f"{prefix}executions/<uuid:execution_id>/receipt",
            views.ExecutionReceiptView.as_view(),
            name=_named(prefix, "execution-receipt"),
        ),
    ]
for prefix in AGENT_PREFIXES:
    urlpatterns += [
        path(f"{prefix}register", views.RegisterView.as_view(), name=_named(prefix, "register")),
        path(f"{prefix}discover", views.DiscoverView.as_view(), name=_named(prefix, "discover")),
        path(f"{prefix}<str:agent_id>", views.AgentDetailView.as_view(), name=_named(prefix, "detail")),
        path(f"{prefix}<str:agent_id>/status", views.AgentStatusView.as_view(), name=_named(prefix, "status")),
        path(f"{prefix}<str:agent_id>/heartbeat", views.AgentHeartbeatView.as_view(), name=_named(prefix, "heartbeat")),
        path(f"{prefix}<str:agent_id>/poll", views.AgentPollView.as_view(), name=_named(prefix, "poll")),
    ]
for prefix in TASK_PREFIXES:
    urlpatterns += [
        path(f"{prefix}submit", views.TaskSubmitView.as_view(), name=_named(prefix, "submit")),
        path(f"{prefix}status", views.TaskStatusView.as_view(), name=_named(prefix, "status")),
        path(f"{prefix}queues", views.QueuesView.as_view(), name=_named(prefix, "queues")),
        path(f"{prefix}queues/stats", views.QueueStatsView.as_view(), name=_named(prefix, "queue-stats")),
        path(
            f"{prefix}queues/<str:priority>/clear", views.QueueClearView.as_view(), name=_named(prefix, "queue-clear")
        ),
        path(f"{prefix}<uuid:task_id>", views.TaskDetailView.as_view(), name=_named(prefix, "detail")),
        path(f"{prefix}<uuid:task_id>/result", views.TaskResultView.as_view(), name=_named(prefix, "result")),
        path(f"{prefix}<uuid:task_id>/fail", views.TaskFailView.as_view(), name=_named(prefix, "fail")),
    ]
