import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator

from aitbc_site.routing import websocket_application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("in_memory_channel_layer")]


@pytest.mark.parametrize("path", ["/ws/nowhere/", "/ws/jobs/not-a-uuid/", "/ws/executions/1/", "/"])
def test_a_socket_at_an_address_no_route_serves_is_closed_4404(path):
    async def scenario():
        socket = WebsocketCommunicator(websocket_application(), path)
        connected, _ = await socket.connect()
        closed = await socket.receive_output()
        await socket.disconnect()
        return connected, closed

    connected, closed = async_to_sync(scenario)()

    assert connected
    assert closed == {"type": "websocket.close", "code": 4404}
