from django.urls import path

from miners.api import views

# The routes of the miner work protocol (heartbeat, poll, results, claims) are jobs': jobs.api.urls.
urlpatterns = [
    path("v1/miners/register", views.RegisterView.as_view(), name="miner-register"),
    path("v1/miners/<str:miner_id>/capabilities", views.MinerCapabilitiesView.as_view(), name="miner-capabilities"),
    # The original coordinator's miner router.
    path("v1/miner/register", views.RegisterView.as_view(), name="legacy-miner-register"),
]
