from django.urls import path

from swarm.api import views

PREFIXES = ("v1/swarm/", "swarm/")


def _named(prefix: str, name: str) -> str:
    return f"{prefix.strip('/').replace('/', '-')}-{name}"


urlpatterns = []
for prefix in PREFIXES:
    urlpatterns += [
        path(f"{prefix}join", views.JoinView.as_view(), name=_named(prefix, "join")),
        path(f"{prefix}list", views.ListView.as_view(), name=_named(prefix, "list")),
        path(f"{prefix}coordinate", views.CoordinateView.as_view(), name=_named(prefix, "coordinate")),
        path(f"{prefix}<uuid:swarm_id>/leave", views.LeaveView.as_view(), name=_named(prefix, "leave")),
        path(f"{prefix}tasks/<uuid:task_id>/status", views.TaskStatusView.as_view(), name=_named(prefix, "status")),
        path(
            f"{prefix}tasks/<uuid:task_id>/consensus",
            views.ConsensusView.as_view(),
            name=_named(prefix, "consensus"),
        ),
        path(f"{prefix}tasks/<uuid:task_id>/choose", views.ChooseView.as_view(), name=_named(prefix, "choose")),
        path(f"{prefix}tasks/<uuid:task_id>/cancel", views.CancelView.as_view(), name=_named(prefix, "cancel")),
    ]
