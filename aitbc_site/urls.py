from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularJSONAPIView, SpectacularRedocView, SpectacularSwaggerView

from aitbc_site import health, views
from aitbc_site.metrics import metrics_view

urlpatterns = [
    # miners' before jobs': jobs' v1/miners/<miner_id> would otherwise take v1/miners/register.
    path("", include("miners.api.urls")),
    path("", include("jobs.api.urls")),
    path("", include("catalog.api.urls")),
    path("", include("openai_compat.api.urls")),
    path("", include("payments.api.urls")),
    path("", include("accounts.api.urls")),
    path("", include("explorer.api.urls")),
    path("", include("agents.api.urls")),
    path("", include("swarm.api.urls")),
    path("", include("webhooks.api.urls")),
    path("health", health.HealthView.as_view(), name="health"),
    path("v1/health", health.HealthView.as_view(), name="v1-health"),
    path("health/live", health.HealthView.as_view(), name="health-live"),
    path("health/ready", health.ReadyView.as_view(), name="health-ready"),
    path("metrics", metrics_view, name="metrics"),
    path("v1/metrics", health.MetricsSummaryView.as_view(), name="v1-metrics"),
    path("openapi.json", SpectacularJSONAPIView.as_view(), name="openapi"),
    path("docs", SpectacularSwaggerView.as_view(url_name="openapi"), name="docs"),
    path(
        "redoc", SpectacularRedocView.as_view(url_name="openapi", template_name="aitbc_site/redoc.html"), name="redoc"
    ),
    path("admin/", admin.site.urls),
    # The pages: each app serves its own.
    path("", views.home, name="home"),
    path("favicon.ico", views.FaviconView.as_view(), name="favicon"),
    path("", include("accounts.urls")),
    path("", include("jobs.urls")),
    path("", include("payments.urls")),
    path("", include("explorer.urls")),
    path("", include("agents.urls")),
    path("", include("swarm.urls")),
]

handler400 = "core.api.exceptions.bad_request"
handler403 = "core.api.exceptions.permission_denied"
handler404 = "core.api.exceptions.not_found"
handler500 = "core.api.exceptions.server_error"
