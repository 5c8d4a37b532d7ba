"""ASGI entry point: ``daphne aitbc_site.asgi:application`` serves HTTP and WebSockets."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aitbc_site.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

from aitbc_site.routing import websocket_application  # noqa: E402
from aitbc_site.scheduler import start_embedded  # noqa: E402
from core.shutdown import ConnectionsInFlight, drain_daphne_on_sigterm  # noqa: E402

start_embedded()

application = ConnectionsInFlight(
    ProtocolTypeRouter(
        {
            "http": django_asgi_app,
            "websocket": websocket_application(),
        }
    )
)
# SIGTERM answers long polls and closes sockets with 4503 before daphne stops.
drain_daphne_on_sigterm(application)
