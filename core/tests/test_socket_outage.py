"""A socket whose channel layer loses Redis is closed with 4503 (connect again), not 1011 with a
traceback, and leaves nothing behind in its process."""

import asyncio
import uuid

import pytest
from asgiref.sync import async_to_sync
from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter

from aitbc_site.routing import websocket_urlpatterns
from core import sockets
from core.sockets import CLOSE_RESTARTING
from tests.sockets import Socket

pytestmark = pytest.mark.django_db(transaction=True)

application = AuthMiddlewareStack(URLRouter(websocket_urlpatterns))


@pytest.fixture
def layer_on(redis_server, settings):
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "core.channel_layers.RedisChannelLayer",
            "CONFIG": {"hosts": [redis_server.url], "prefix": f"aitbc-test-{uuid.uuid4().hex}"},
        }
    }
    return redis_server


@pytest.mark.parametrize("path", ["/ws/dashboard/", "/ws/jobs/{job_id}/"])
def test_a_socket_that_loses_its_channel_layer_is_closed_to_connect_again(path, layer_on, client_api, submit_job):
    job_id = submit_job(client_api)["job_id"]

    async def scenario():
        socket = Socket(application, path.format(job_id=job_id), headers=[(b"x-api-key", client_api.raw_key.encode())])
        connected, _ = await socket.connect()
        assert connected
        await socket.receive_json_from(timeout=5)  # the snapshot
        await asyncio.to_thread(layer_on.stop)
        # The submission's own event may still be on its way to the socket: it is sent before the close.
        output = await socket.receive_output(timeout=20)
        while output["type"] == "websocket.send":
            output = await socket.receive_output(timeout=20)
        return output, len(sockets._open_sockets)

    closed, still_open = async_to_sync(scenario)()

    assert closed == {"type": "websocket.close", "code": CLOSE_RESTARTING}
    assert still_open == 0


class FailingSocket(sockets.ClientSocket):
    async def connect(self):
        await self.accept()
        raise RuntimeError("the snapshot's query failed")


def test_a_socket_that_fails_with_an_error_of_its_own_is_not_left_open():
    async def scenario():
        socket = Socket(FailingSocket.as_asgi(), "/ws/failing/")
        assert (await socket.connect())[0]
        with pytest.raises(RuntimeError) as raised:
            await socket.receive_output(timeout=5)
        # Its traceback still holds the consumer, as a server's log of the error may: closed all the same.
        assert raised.traceback
        return [open_socket for open_socket in sockets._open_sockets if isinstance(open_socket, FailingSocket)]

    assert async_to_sync(scenario)() == []
