from django.urls import path

from agents import views

app_name = "agents"

urlpatterns = [
    path("agents/", views.AgentsPageView.as_view(), name="agents"),
    path("workflows/<uuid:workflow_id>/", views.WorkflowPageView.as_view(), name="workflow"),
    path("executions/<uuid:execution_id>/", views.ExecutionPageView.as_view(), name="execution"),
]
