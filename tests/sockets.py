"""WebSockets of the site's routing, opened in the test's process as a program opens them."""

from asgiref.sync import sync_to_async
from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from aitbc_site.routing import websocket_urlpatterns
from jobs import events

application = AuthMiddlewareStack(URLRouter(websocket_urlpatterns))


class Socket(WebsocketCommunicator):
    """A ``WebsocketCommunicator`` that waits up to 5 s, not 1, for the handshake and for each
    output: a socket's connect reads the database, and an event is sent from another thread; on a
    loaded machine either may take longer than a second. A test waits only as long as it takes,
    unless it fails."""

    TIMEOUT = 5

    async def connect(self, timeout=TIMEOUT):
        return await super().connect(timeout)

    async def receive_output(self, timeout=TIMEOUT):
        return await super().receive_output(timeout)

    async def receive_from(self, timeout=TIMEOUT):
        return await super().receive_from(timeout)

    async def receive_json_from(self, timeout=TIMEOUT):
        return await super().receive_json_from(timeout)

    async def disconnect(self, code=1000, timeout=TIMEOUT):
        return await super().disconnect(code, timeout)


def socket(path: str, key: str, **headers) -> WebsocketCommunicator:
    """A socket to ``path`` with the API key ``key`` in ``X-Api-Key`` and the other ``headers``."""
    pairs = [(b"x-api-key", key.encode())] + [
        (name.lower().encode(), value.encode()) for name, value in headers.items()
    ]
    return Socket(application, path, headers=pairs)


async def events_sent() -> None:
    """Wait until the job events published so far (from threads: requests, claims) have gone out.

    They are sent off the publishing thread; one published before a socket joins its job's group
    can reach it after its snapshot, telling the state the snapshot told. A test that expects a
    particular event next after the snapshot waits for this before it connects."""
    await sync_to_async(events.flush, thread_sensitive=False)()
