"""``ws/dashboard/``: the live network feed the network page and the dashboard show.

What happens is published by the apps where it happens (``jobs.feed``: jobs submitted and
finished, miners coming and going, blocks sealed, each user's own job updates); the figures every
socket gets every few seconds are the explorer's (``explorer.selectors.live_network_figures``).
"""

import asyncio
import json
import logging
import time

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from accounts.services import api_key_authenticate
from core.sockets import CLOSE_UNAUTHENTICATED, ClientSocket, socket_credentials
from explorer import selectors
from jobs import events, feed

logger = logging.getLogger(__name__)


class DashboardConsumer(ClientSocket):
    """``ws/dashboard/``: the live network feed of the browser dashboard (see ``jobs.feed``).

    Credentials as for ``ws/jobs/<id>/``: an API key (header or subprotocol) of any scope, else
    the session's user; none, or an invalid key, is closed 4401 after accepting. The socket gets a
    ``network.stats`` snapshot first, then every feed event published from then on:
    ``{"type": "dashboard.event", "kind": ..., "data": {...}}``, and ``job.updated`` events for
    each status change of the user's own jobs (the key's user's, for a key), none older than one
    already sent for its job (its ``sequence``).

    The sockets of one server process do not join the ``dashboard`` group each: the process
    joins it once (see ``_DashboardHub``) and copies each event to its sockets. A Redis channel
    layer then carries one message per event and process instead of one per socket, which is
    what lets one process feed thousands of sockets.

    Client messages are ignored, except ``{"type": "ping"}``, answered ``{"type": "pong"}``.
    """

    # The sequences of the user's jobs heard of last (``jobs.events.status_sequence``), the most
    # recently changed last: an update older than one already sent is not sent.
    MAX_JOBS_FOLLOWED = 1000

    watching = False
    sequences: dict | None = None

    async def connect(self):
        events.use_server_loop(asyncio.get_running_loop())
        credentials = socket_credentials(self.scope)
        user = self.scope.get("user")
        if credentials.raw_key is None:
            user_id = user.pk if user and user.is_authenticated else None
        else:
            api_key = await database_sync_to_async(api_key_authenticate)(raw_key=credentials.raw_key)
            user_id = api_key.user_id if api_key is not None else None
        if user_id is None:
            await self.refuse(CLOSE_UNAUTHENTICATED, credentials.subprotocol)
            return
        # The user's own jobs: joined before accepting, so a page reading its list on ``open``
        # misses no change.
        self.sequences = {}
        await self.join_group(feed.user_group(user_id))
        try:
            await self.accept(credentials.subprotocol)
            # The snapshot comes first; the socket's feed starts once it is sent.
            await self.send_json(feed.network_stats_event(await _dashboard_hub.latest_stats()))
            await _dashboard_hub.watch(self)
            self.watching = True
        except BaseException:
            # A connect that fails leaves no membership behind (disconnect won't be called).
            await self.disconnect(None)
            raise

    async def disconnect(self, code):
        await self.leave_group()
        if self.watching:
            self.watching = False
            await _dashboard_hub.unwatch(self)

    async def dashboard_event(self, event):
        """One of the user's own ``job.updated`` events."""
        if self._is_news(event):
            await self.send_json(event)

    async def dashboard_batch(self, message):
        for event in message["events"]:
            if self._is_news(event):
                await self.send_json(event)

    def _is_news(self, event: dict) -> bool:
        """False for a job update older than one of the same job already sent (events come from
        several processes, each in its own order)."""
        data = event.get("data") or {}
        if event.get("kind") != feed.JOB_UPDATED or "sequence" not in data or self.sequences is None:
            return True
        job_id = data.get("job_id")
        if events.is_older(data, self.sequences.get(job_id)):
            return False
        self.sequences.pop(job_id, None)
        self.sequences[job_id] = data["sequence"]
        if len(self.sequences) > self.MAX_JOBS_FOLLOWED:
            del self.sequences[next(iter(self.sequences))]
        return True


class _DashboardHub:
    """This process's dashboard sockets, fed by one member of the ``dashboard`` group.

    While any socket is open, a relay task holds a channel in the group and sends each event it
    receives to every socket (serialised once), and a ticker sends ``network.stats`` every
    ``STATS_INTERVAL_SECONDS``: the figures are computed once per process and interval,
    whatever the number of sockets, and not at all when nobody watches. Snapshots on connect
    reuse figures that fresh.
    """

    STATS_INTERVAL_SECONDS = 5.0
    SENDS_PER_YIELD = 100

    def __init__(self):
        self.sockets: set[DashboardConsumer] = set()
        self.relay: asyncio.Task | None = None
        self.subscribed: asyncio.Event | None = None
        self.ticker: asyncio.Task | None = None
        self.figures: tuple[float, dict] | None = None
        self.refreshing: asyncio.Task | None = None

    async def watch(self, socket: DashboardConsumer) -> None:
        loop = asyncio.get_running_loop()
        self.sockets.add(socket)
        if self.relay is None or self.relay.done() or self.relay.get_loop() is not loop:
            self.subscribed = asyncio.Event()
            self.relay = loop.create_task(self._relay(self.subscribed))
            self.ticker = loop.create_task(self._tick())
        subscribed = self.subscribed
        await subscribed.wait()

    async def unwatch(self, socket: DashboardConsumer) -> None:
        self.sockets.discard(socket)
        if not self.sockets and self.relay is not None:
            relay, ticker, self.relay, self.ticker = self.relay, self.ticker, None, None
            relay.cancel()
            ticker.cancel()
            await asyncio.wait({relay, ticker})

    async def latest_stats(self) -> dict:
        """Figures at most one interval old; concurrent callers share one computation."""
        if self.figures is not None and time.monotonic() - self.figures[0] < self.STATS_INTERVAL_SECONDS:
            return self.figures[1]
        loop = asyncio.get_running_loop()
        if self.refreshing is None or self.refreshing.done() or self.refreshing.get_loop() is not loop:
            self.refreshing = loop.create_task(self._compute_stats())
        return await asyncio.shield(self.refreshing)

    async def _compute_stats(self) -> dict:
        figures = await database_sync_to_async(selectors.live_network_figures)()
        self.figures = (time.monotonic(), figures)
        return figures

    async def _relay(self, subscribed: asyncio.Event) -> None:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(feed.DASHBOARD_GROUP, channel)
        subscribed.set()
        try:
            while True:
                message = await layer.receive(channel)
                batch = message["events"] if message.get("type") == feed.DASHBOARD_BATCH else [message]
                for event in batch:
                    await self._send_to_all(json.dumps(event))
        finally:
            await layer.group_discard(feed.DASHBOARD_GROUP, channel)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.STATS_INTERVAL_SECONDS)
            try:
                event = feed.network_stats_event(await self.latest_stats())
            except Exception:
                logger.exception("network stats not computed")
                continue
            await self._send_to_all(json.dumps(event))

    async def _send_to_all(self, text: str) -> None:
        for sent, socket in enumerate(list(self.sockets), start=1):
            try:
                await socket.send(text_data=text)
            except Exception as error:  # a socket closing meanwhile: it leaves by itself
                logger.debug("dashboard frame not sent: %r", error)
            if sent % self.SENDS_PER_YIELD == 0:
                # Let the server write out what is sent so far: the first sockets need not wait for the last.
                await asyncio.sleep(0)


_dashboard_hub = _DashboardHub()
