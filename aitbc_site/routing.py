"""WebSocket routes, served by daphne next to HTTP. Each app adds its consumers here."""

from django.urls import path

from jobs.consumers import JobConsumer

websocket_urlpatterns: list = [
    path("ws/jobs/<uuid:job_id>/", JobConsumer.as_asgi()),
]
