from django.urls import path

from swarm import views

app_name = "swarm"

urlpatterns = [
    path("swarms/", views.SwarmsPageView.as_view(), name="swarms"),
    path("swarms/<uuid:swarm_id>/", views.SwarmPageView.as_view(), name="swarm"),
    path("swarms/tasks/<uuid:task_id>/", views.TaskPageView.as_view(), name="task"),
]
