"""WebSocket routes, served by daphne next to HTTP. Each app adds its consumers here."""

from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.urls import path, re_path

from agents.consumers import AgentConsumer, ExecutionConsumer
from core.sockets import UnknownRouteConsumer
from explorer.consumers import DashboardConsumer
from jobs.consumers import JobConsumer, MinerConsumer

websocket_urlpatterns: list = [
    path("ws/jobs/<uuid:job_id>/", JobConsumer.as_asgi()),
    path("ws/dashboard/", DashboardConsumer.as_asgi()),
    path("ws/miners/", MinerConsumer.as_asgi()),
    path("ws/agents/<str:agent_id>/", AgentConsumer.as_asgi()),
    path("ws/executions/<uuid:execution_id>/", ExecutionConsumer.as_asgi()),
    re_path(r"", UnknownRouteConsumer.as_asgi()),  # last: whatever the routes above do not match
]


class BrowserOriginValidator(OriginValidator):
    """A browser always sends ``Origin``: it must be one of ``ALLOWED_HOSTS``, so a page elsewhere
    cannot open a socket with its visitor's session. Programs (CLIs, miners) send none and
    authenticate with their key, which the consumers check."""

    def valid_origin(self, parsed_origin):
        return parsed_origin is None or super().valid_origin(parsed_origin)


def websocket_application():
    allowed = settings.ALLOWED_HOSTS or (["localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else [])
    return BrowserOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)), allowed)
