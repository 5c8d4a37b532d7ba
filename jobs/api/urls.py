from django.urls import path

from jobs.api import views

urlpatterns = [
    path("v1/jobs", views.JobsView.as_view(), name="jobs"),
    path("v1/jobs/history", views.JobListView.as_view(), name="jobs-history"),
    path("v1/jobs/<uuid:job_id>", views.JobDetailView.as_view(), name="job-detail"),
    path("v1/jobs/<uuid:job_id>/status", views.JobStatusView.as_view(), name="job-status"),
    path("v1/jobs/<uuid:job_id>/result", views.JobResultView.as_view(), name="job-result"),
    path("v1/jobs/<uuid:job_id>/cancel", views.JobCancelView.as_view(), name="job-cancel"),
    path("v1/jobs/<uuid:job_id>/receipt", views.JobReceiptView.as_view(), name="job-receipt"),
    path("v1/jobs/<uuid:job_id>/receipts", views.JobReceiptsView.as_view(), name="job-receipts"),
    # The original coordinator's client router.
    path("v1/client/jobs", views.JobSubmitView.as_view(), name="client-jobs"),
    path("v1/client/jobs/<uuid:job_id>/status", views.JobStatusView.as_view(), name="client-job-status"),
    path("v1/client/jobs/<uuid:job_id>/receipts", views.JobReceiptsView.as_view(), name="client-job-receipts"),
]
