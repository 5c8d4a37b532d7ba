from django.urls import path

from jobs import views

app_name = "jobs"

urlpatterns = [
    path("jobs/", views.JobListView.as_view(), name="jobs"),
    path("jobs/<uuid:job_id>/", views.JobDetailView.as_view(), name="job"),
    path("miners/", views.MinerListView.as_view(), name="miners"),
]
