from django.contrib.auth import views as auth_views
from django.urls import path
from django.views.generic import RedirectView

from dashboard import views

app_name = "dashboard"

# Every page ends in a slash. The explorer's JSON aliases (explorer/api/urls.py) have none
# (``/explorer/blocks`` is JSON, ``/explorer/blocks/`` is this page) and are mounted first.
urlpatterns = [
    path("", views.OverviewView.as_view(), name="overview"),
    path("login/", views.SignInView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(next_page="dashboard:login"), name="logout"),
    path("signup/", views.SignUpView.as_view(), name="signup"),
    path("keys/", views.KeyListView.as_view(), name="keys"),
    path("keys/<int:key_id>/revoke/", views.KeyRevokeView.as_view(), name="key-revoke"),
    path("jobs/", views.JobListView.as_view(), name="jobs"),
    path("jobs/<uuid:job_id>/", views.JobDetailView.as_view(), name="job"),
    path("wallet/", views.WalletView.as_view(), name="wallet"),
    path("miners/", views.MinerListView.as_view(), name="miners"),
    path("network/", views.NetworkView.as_view(), name="network"),
    path("explorer/", views.BlockListView.as_view(), name="explorer"),
    path("explorer/blocks/", RedirectView.as_view(pattern_name="dashboard:explorer"), name="blocks"),
    path("explorer/blocks/<int:height>/", views.BlockDetailView.as_view(), name="block"),
    path("explorer/transactions/<str:tx_hash>/", views.TransactionDetailView.as_view(), name="transaction"),
    path("explorer/addresses/<str:address>/", views.AddressDetailView.as_view(), name="address"),
    path("explorer/receipts/", views.ReceiptListView.as_view(), name="receipts"),
]
