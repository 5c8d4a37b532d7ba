"""WebSocket routes, served by daphne next to HTTP. Each app adds its consumers here."""

websocket_urlpatterns: list = []
