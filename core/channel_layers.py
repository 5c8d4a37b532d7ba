"""channels-redis, sending and receiving in bulk.

channels-redis sends a group message in four Redis round trips and receives one message per
three, each after the one before. A server process streaming 200 jobs' tokens (4,000 events a
second) falls seconds behind that way, and its streams then end before their last pieces arrive.
This layer keeps channels-redis's storage (the same keys, message format, capacity and expiry),
joins a group in one round trip instead of two, and adds:

- ``group_send_many``: many groups, each with its messages in order, in two script calls per
  Redis host whatever their number: one reads the groups' members, one queues every message;
- ``groups_with_members``: which groups have a member, asked from the calling thread on a
  connection it keeps, one round trip per Redis host: publishers outside the event loop skip,
  without a hop to the loop, the groups nobody watches (most jobs' groups);
- receiving in batches: all the channels of one process (``specific.<process>!<id>``: its
  sockets and streams) share one Redis queue, and a receive that finds nothing handed out yet
  pops everything waiting there (up to ``RECEIVE_BATCH``) in one script call, the rest handed
  out from memory by the receives that follow.
"""

import asyncio
import collections
import logging
import socket
import time

from channels_redis import core

from core.versioned import guard_call

logger = logging.getLogger(__name__)

RECEIVE_BATCH = 1000

# How long a connection of the layer takes at most to find its Redis gone: TCP keepalive probes
# while it waits and a bound on unacknowledged writes find a host or network gone, and a receive
# gives up on a Redis that holds its connection open without answering (a process frozen).
DEAD_REDIS_SECONDS = 15


def connection_options(url: str) -> dict:
    """The options of the layer's connections to the Redis at ``url``. They find a dead Redis
    through TCP rather than redis-py's ``socket_timeout`` (5 s unless told): with one, each write
    goes through ``asyncio.wait_for``, which on Python 3.11 loses a cancellation that lands as the
    write completes. A closing socket's receive then goes on popping, and its consumer never ends."""
    options = {"socket_timeout": None}
    if url.startswith("unix://"):  # no TCP: a Redis gone closes the socket
        return options
    tcp = {"TCP_KEEPIDLE": 5, "TCP_KEEPINTVL": 2, "TCP_KEEPCNT": 5, "TCP_USER_TIMEOUT": DEAD_REDIS_SECONDS * 1000}
    keepalive = {getattr(socket, name): value for name, value in tcp.items() if hasattr(socket, name)}
    return {**options, "socket_keepalive": True, "socket_keepalive_options": keepalive}


# The members of each group (KEYS), past the group expiry (ARGV[1]) dropped first.
_GROUP_MEMBERS = """
local members = {}
for i = 1, #KEYS do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, ARGV[1])
    members[i] = redis.call('ZRANGE', KEYS[i], 0, -1)
end
return members
"""

# Queue messages on channels (KEYS). ARGV: now, expiry, then each key's capacity, then pairs of
# (key number, message). A key's messages are scored after everything it holds and in the order
# given (channels-redis pops the lowest score first); a message past its key's capacity is
# dropped. Returns how many were.
_QUEUE = """
local now, expiry = tonumber(ARGV[1]), tonumber(ARGV[2])
local last, size, dropped = {}, {}, 0
for i = 1, #KEYS do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, now - expiry)
    local top = redis.call('ZRANGE', KEYS[i], -1, -1, 'WITHSCORES')
    last[i] = tonumber(top[2] or 0)
    size[i] = redis.call('ZCARD', KEYS[i])
end
for j = 3 + #KEYS, #ARGV, 2 do
    local i = tonumber(ARGV[j])
    if size[i] < tonumber(ARGV[2 + i]) then
        local score = string.format('%.6f', math.max(now, last[i] + 0.000001))
        redis.call('ZADD', KEYS[i], score, ARGV[j + 1])
        last[i], size[i] = tonumber(score), size[i] + 1
    else
        dropped = dropped + 1
    end
end
for i = 1, #KEYS do
    redis.call('EXPIRE', KEYS[i], expiry)
end
return dropped
"""

# Pop up to ARGV[2] messages off a channel (KEYS[1]) into its backup (KEYS[2]), after putting
# back the backup of a fetch whose answer never came (ARGV[1] = '1') or dropping it.
_FETCH = """
if ARGV[1] == '1' then
    local backed_up = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
    for i = 1, #backed_up, 2 do
        redis.call('ZADD', KEYS[1], backed_up[i + 1], backed_up[i])
    end
end
redis.call('DEL', KEYS[2])
local popped = redis.call('ZPOPMIN', KEYS[1], ARGV[2])
local members = {}
for i = 1, #popped, 2 do
    redis.call('ZADD', KEYS[2], popped[i + 1], popped[i])
    members[#members + 1] = popped[i]
end
if #members > 0 then
    redis.call('EXPIRE', KEYS[2], ARGV[3])
end
return members
"""


class RedisChannelLayer(core.RedisChannelLayer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Messages popped off this process's channel keys, not handed out yet.
        self._fetched: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        # Keys whose last fetch may have popped messages into the backup that never arrived here.
        self._fetch_unanswered: set[str] = set()

    async def group_add(self, group, channel):
        """As channels-redis adds a channel to a group, in one round trip instead of two."""
        assert self.require_valid_group_name(group), "Group name not valid"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        key = self._group_key(group)
        pipeline = self.connection(self.consistent_hash(group)).pipeline(transaction=False)
        pipeline.zadd(key, {channel: time.time()})
        pipeline.expire(key, self.group_expiry)
        await pipeline.execute()

    # --- Sending ------------------------------------------------------------------------

    async def group_send_many(self, by_group: dict[str, list], *, skip: frozenset[str] = frozenset()) -> list[str]:
        """Send each group of ``by_group`` its messages, in order; a message may be a function that
        builds it, called only for a group with members. Members in ``skip`` are left out (they
        were handed the messages otherwise). Returns the groups that had members."""
        by_host: dict[int, list[str]] = collections.defaultdict(list)
        for group in by_group:
            assert self.require_valid_group_name(group), "Group name not valid"
            by_host[self.consistent_hash(group)].append(group)
        queued: dict[int, dict[str, list[bytes]]] = collections.defaultdict(dict)  # host → key → messages
        capacities: dict[str, int] = {}
        watched = []
        for index, groups in by_host.items():
            script = self.connection(index).register_script(_GROUP_MEMBERS)
            keys = [self._group_key(group) for group in groups]
            members_of = await script(keys=keys, args=[int(time.time()) - self.group_expiry])
            for group, members in zip(groups, members_of, strict=True):
                if not members:
                    continue
                watched.append(group)
                channels_by_key: dict[str, list[str]] = collections.defaultdict(list)
                for channel in (member.decode() for member in members):
                    if channel in skip:
                        continue
                    channels_by_key[self.prefix + self.non_local_name(channel)].append(channel)
                if not channels_by_key:
                    continue
                for message in by_group[group]:
                    body = message() if callable(message) else message
                    for key, channels in channels_by_key.items():
                        capacities[key] = self.get_capacity(channels[0])
                        host = queued[self.consistent_hash(key.removeprefix(self.prefix))]
                        host.setdefault(key, []).append(self.serialize({**body, "__asgi_channel__": channels}))
        for index, messages_by_key in queued.items():
            keys = list(messages_by_key)
            args = [time.time(), self.expiry, *(capacities[key] for key in keys)]
            for number, key in enumerate(keys, start=1):
                for message in messages_by_key[key]:
                    args += [number, message]
            dropped = await self.connection(index).register_script(_QUEUE)(keys=keys, args=args)
            if dropped:
                logger.warning("%d message(s) over channel capacity dropped", dropped)
        return watched

    def groups_with_members(self, groups) -> set[str]:
        """Those of ``groups`` with a member now (one that joined within the group expiry, as
        ``group_send_many`` counts them), read from the calling thread, not the event loop: one
        round trip per Redis host, on a connection the process keeps (``core.versioned.guard_call``).
        Raises ``redis.RedisError`` when a host does not answer, ``ValueError`` for a host given
        otherwise than as a URL (``address``)."""
        by_host: dict[int, list[str]] = collections.defaultdict(list)
        for group in groups:
            assert self.require_valid_group_name(group), "Group name not valid"
            by_host[self.consistent_hash(group)].append(group)
        # group_send_many drops members at or below this score, then sends to the rest.
        alive = f"({int(time.time()) - self.group_expiry}"
        found = set()
        for index, names in by_host.items():
            url = self.hosts[index].get("address")
            if not isinstance(url, str) or "://" not in url:
                raise ValueError(f"Redis host {index} of the channel layer is not given as a URL")
            counts = guard_call(url, *(("ZCOUNT", self._group_key(group), alive, "+inf") for group in names))
            found.update(group for group, count in zip(names, counts, strict=True) if count)
        return found

    # --- Receiving ----------------------------------------------------------------------

    async def receive_single(self, channel):
        if "!" not in channel:  # a general channel: as channels-redis receives it
            return await super().receive_single(channel)
        assert self.require_valid_channel_name(channel, receive=True), "Channel name invalid"
        key = self.prefix + channel
        fetched = self._fetched[key]
        if not fetched:
            await self._fetch(channel, key, fetched)
        message = self.deserialize(fetched.popleft())
        return message.pop("__asgi_channel__", channel), message

    async def _fetch(self, channel: str, key: str, into: collections.deque) -> None:
        """Wait for messages on a process channel key, and put all those waiting ``into``."""
        connection = self.connection(self.consistent_hash(channel))
        fetch = connection.register_script(_FETCH)
        backup = self._backup_channel_name(key)
        while True:
            restore = key in self._fetch_unanswered
            self._fetch_unanswered.add(key)  # until the answer is here: a cancelled fetch restores
            # Raises TimeoutError if Redis does not answer (asyncio.timeout: a cancellation still ends it).
            async with asyncio.timeout(self.brpop_timeout + DEAD_REDIS_SECONDS):
                popped = await fetch(keys=[key, backup], args=[int(restore), RECEIVE_BATCH, int(self.expiry)])
                if not popped:
                    self._fetch_unanswered.discard(key)
                    # Nothing waits: block until something arrives (channels-redis's own pop).
                    result = await connection.bzpopmin(key, timeout=self.brpop_timeout)
                    if result is None:
                        continue
                    popped = [result[1]]
            into.extend(popped)
            self._fetch_unanswered.discard(key)
            return
