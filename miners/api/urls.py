from django.urls import path

from miners.api import views

urlpatterns = [
    path("v1/miners/register", views.RegisterView.as_view(), name="miner-register"),
    path("v1/miners/heartbeat", views.HeartbeatView.as_view(), name="miner-heartbeat"),
    path("v1/miners/poll", views.PollView.as_view(), name="miner-poll"),
    path("v1/miners/<uuid:job_id>/result", views.ResultView.as_view(), name="miner-result"),
    path("v1/miners/<uuid:job_id>/fail", views.FailView.as_view(), name="miner-fail"),
    path("v1/miners/<str:miner_id>/jobs", views.MinerJobsView.as_view(), name="miner-jobs"),
    path("v1/miners/<str:miner_id>/earnings", views.MinerEarningsView.as_view(), name="miner-earnings"),
    path("v1/miners/<str:miner_id>/capabilities", views.MinerCapabilitiesView.as_view(), name="miner-capabilities"),
    path("v1/miners/<str:miner_id>", views.MinerDetailView.as_view(), name="miner-detail"),
    # The original coordinator's miner router.
    path("v1/miner/register", views.RegisterView.as_view(), name="legacy-miner-register"),
    path("v1/miner/heartbeat", views.HeartbeatView.as_view(), name="legacy-miner-heartbeat"),
    path("v1/miner/jobs", views.PollView.as_view(http_method_names=["get", "options"]), name="legacy-miner-jobs"),
    path("v1/miner/result", views.LegacyResultView.as_view(), name="legacy-miner-result"),
    # The integration tutorial's claim protocol.
    path("v1/jobs/available", views.AvailableJobsView.as_view(), name="jobs-available"),
    path("v1/jobs/<uuid:job_id>/claim", views.ClaimView.as_view(), name="job-claim"),
    path("v1/jobs/<uuid:job_id>/complete", views.CompleteView.as_view(), name="job-complete"),
]
