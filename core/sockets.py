"""The base of every WebSocket: credentials from the handshake, pings, refusals that carry their code,
the channel-layer group it follows, and closing for a restart."""

import asyncio
import contextlib
import logging
import weakref
from dataclasses import dataclass

from channels.generic.websocket import AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer
from django.utils.datastructures import CaseInsensitiveMapping
from redis.exceptions import RedisError

from core import shutdown
from core.api.credentials import raw_key_from_headers
from core.api.parsers import load_json

logger = logging.getLogger(__name__)

CLOSE_DONE = 1000
# The server is stopping: connect again (as HTTP's 503; RFC 6455's 1012 "service restart" is not a
# code daphne may send).
CLOSE_RESTARTING = 4503
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
KEY_SUBPROTOCOL_PREFIX = "aitbc.key."


@dataclass(frozen=True)
class Credentials:
    raw_key: str | None
    # The offered subprotocol that carried the key: the handshake must echo it.
    subprotocol: str | None


class ClientSocket(AsyncJsonWebsocketConsumer):
    """A socket whose client may send ``{"type": "ping"}``, answered ``{"type": "pong"}``; its
    other JSON objects go to ``on_message``, and anything else is ignored.

    When the server stops, every open socket is closed with 4503 (``close_sockets_for_restart``),
    and one that connects meanwhile is accepted and closed the same way; so is a socket whose
    channel layer loses Redis: its client connects again once the layer is back.
    """

    # The channel-layer group the socket follows, if any: it leaves it with ``leave_group``.
    group: str | None = None

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        except (RedisError, OSError) as error:
            logger.warning("%s closed: its channel layer failed (%s)", scope.get("path"), error)
            _open_sockets.discard(self)
            with contextlib.suppress(RedisError, OSError):  # memberships left lapse after the layer's expiry
                await self.disconnect(CLOSE_RESTARTING)
            await send({"type": "websocket.close", "code": CLOSE_RESTARTING})
        finally:
            # Whatever ended it (a disconnect, an error of its own, a cancel): a socket whose
            # application has returned is open no longer, though its object may live on (an
            # exception's traceback holds it).
            _open_sockets.discard(self)

    async def websocket_connect(self, message):
        if shutdown.stopping():
            await self.refuse(CLOSE_RESTARTING, socket_credentials(self.scope).subprotocol)
            return
        _open_sockets.add(self)
        await super().websocket_connect(message)

    async def websocket_disconnect(self, message):
        _open_sockets.discard(self)
        await super().websocket_disconnect(message)

    async def close_for_restart(self) -> None:
        """The server is stopping: tell the client to connect again."""
        await self.close(code=CLOSE_RESTARTING)

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        try:
            content = load_json(text_data) if text_data else None
        except ValueError:  # malformed, nested too deeply or holding unstorable text
            return
        if not isinstance(content, dict):
            return
        if content.get("type") == "ping":
            await self.send_json({"type": "pong"})
        else:
            await self.on_message(content)

    async def on_message(self, content: dict) -> None:
        """A client message other than a ping: ignored unless a subclass says otherwise."""

    async def refuse(self, code: int, subprotocol: str | None) -> None:
        """Accept, then close with ``code``: a handshake refused outright reaches the client as HTTP
        403, without the code."""
        await self.accept(subprotocol)
        await self.close(code=code)

    async def join_group(self, group: str) -> None:
        self.group = group
        await self.channel_layer.group_add(group, self.channel_name)

    async def leave_group(self) -> None:
        if self.group is not None:
            group, self.group = self.group, None
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except (RedisError, OSError) as error:  # lapses after the layer's group expiry
                logger.warning("could not leave %s: %s", group, error)


# This process's open sockets (a socket leaves when it disconnects).
_open_sockets: weakref.WeakSet[ClientSocket] = weakref.WeakSet()


async def close_sockets_for_restart() -> None:
    """Close every open socket of this process with 4503: the server is stopping."""
    sockets = list(_open_sockets)
    results = await asyncio.gather(*(socket.close_for_restart() for socket in sockets), return_exceptions=True)
    for socket, result in zip(sockets, results, strict=True):
        if isinstance(result, Exception):
            logger.warning("socket %s not closed for the restart: %r", socket.channel_name, result)


def socket_credentials(scope) -> Credentials:
    """The API key a socket's handshake carries: in a header, else in an offered subprotocol
    (``aitbc.key.<KEY>``, or the bare key as the first one offered), which the handshake echoes."""
    headers = CaseInsensitiveMapping(
        {name.decode("latin-1"): value.decode("latin-1") for name, value in scope.get("headers", [])}
    )
    raw_key = raw_key_from_headers(headers)
    offered = scope.get("subprotocols") or []
    if raw_key is not None:
        return Credentials(raw_key=raw_key, subprotocol=None)
    for subprotocol in offered:
        if subprotocol.startswith(KEY_SUBPROTOCOL_PREFIX) and len(subprotocol) > len(KEY_SUBPROTOCOL_PREFIX):
            return Credentials(raw_key=subprotocol.removeprefix(KEY_SUBPROTOCOL_PREFIX), subprotocol=subprotocol)
    if offered:
        return Credentials(raw_key=offered[0], subprotocol=offered[0])
    return Credentials(raw_key=None, subprotocol=None)


class UnknownRouteConsumer(AsyncWebsocketConsumer):
    """A socket at an address no route serves (an unknown path, a job id that is not a UUID): accepted
    and closed with 4404, as a socket for an unknown job is. Without it the router raised, and daphne
    answered the handshake 500 and logged a traceback."""

    async def connect(self):
        await self.accept()
        await self.close(code=CLOSE_NOT_FOUND)
