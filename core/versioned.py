"""Rows that every request reads, kept in each process until they may have changed.

A ``VersionedCache`` keeps what a process read (an API key with its user, a miner) beside the
value of one counter in Redis, read before the rows were. Whatever changes such rows bumps the
counter (``bump``): at once, and again once its transaction commits, so that the next request of
every process reads them again, even one that read the old rows while the change was not yet
committed. An entry is also read again once it is ``max_age`` seconds old, whatever the counter
says, so that a change made some other way (SQL by hand) lands within that time too. Checking the
counter is one ``GET`` to Redis per use, in place of the statement it saves. Without
``REDIS_URL`` (the embedded server), or while Redis does not answer, nothing is kept.

What is kept is shared by the process's requests: only liveness stamps (a key's last use, a
miner's last sign of life) are changed in place; anything else that changes those rows bumps.
"""

import contextlib
import logging
import os
import threading
import time
from functools import lru_cache

import redis
from django.conf import settings
from django.db import transaction
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger(__name__)

# After Redis failed, nothing is kept (or rate limits are counted in-process) this long before it is tried again.
REDIS_RETRY_SECONDS = 1.0


@lru_cache(maxsize=4)
def guard_client(url: str) -> redis.Redis:
    """A Redis client for guards on the request path (rate limits, cache versions): a request never
    waits on reconnects or retries for them."""
    return redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1, retry=Retry(NoBackoff(), 0))


# The guard connections not in use, by URL: process-wide rather than kept by each thread, since
# under daphne each request's sync work runs in a thread of its own, which would open one per request.
_idle_guard_connections: dict[str, list] = {}
_idle_guard_lock = threading.Lock()
# Idle connections kept per URL: as many as the calls that ran at once, up to this.
GUARD_IDLE_MAX = 64


def _forget_parents_connections() -> None:
    # A forked child never sends on its parent's sockets (nor waits on a lock another thread held).
    global _idle_guard_connections, _idle_guard_lock
    _idle_guard_connections, _idle_guard_lock = {}, threading.Lock()


os.register_at_fork(after_in_child=_forget_parents_connections)


@contextlib.contextmanager
def _guard_connection(url: str):
    """A connection to ``url`` for this caller alone, taken from the idle ones (or opened), and
    given back after a call that succeeded; one that failed is closed."""
    with _idle_guard_lock:
        idle = _idle_guard_connections.setdefault(url, [])
        connection = idle.pop() if idle else None
    if connection is None:
        connection = guard_client(url).connection_pool.make_connection()
    else:
        try:
            # Anything to read on an idle connection: the server closed it (an idle client's
            # timeout, a restart) or left something; a fresh one is opened as the pool would.
            stale = connection.can_read(timeout=0)
        except redis.ConnectionError:
            stale = True
        if stale:
            connection.disconnect()
    try:
        yield connection
    except BaseException:
        connection.disconnect()
        raise
    with _idle_guard_lock:
        idle = _idle_guard_connections.setdefault(url, [])
        if len(idle) < GUARD_IDLE_MAX:
            idle.append(connection)
            return
    connection.disconnect()


def guard_call(url: str, *commands: tuple) -> list:
    """The replies to ``commands`` (each a tuple: name, then arguments), sent to the guard Redis at
    ``url`` in one round trip on a connection the process keeps (one for each caller at a time).

    On the request path each guard is one or two commands: a kept connection of its own spares the
    client's pool, retries and events, most of a command's cost. A connection the server closed
    while it was idle is opened again before sending; any failure (an error reply included) closes
    the connection, the next call opening another, and raises ``redis.RedisError``.
    """
    with _guard_connection(url) as connection:
        connection.send_packed_command(connection.pack_commands(commands), check_health=False)
        return [connection.read_response() for _ in commands]


class VersionedCache:
    def __init__(self, name: str, *, max_age: float = 1.0, max_entries: int = 10_000):
        self.name = name
        self.max_age = max_age
        self.max_entries = max_entries
        self._entries: dict = {}
        self._retry_at = 0.0

    def _counter(self) -> str:
        return f"{settings.RATE_LIMIT_KEY_PREFIX}:version:{self.name}"

    def version(self) -> tuple | None:
        """The counter (its name and value) now, to read entries with and to keep what is read next
        with; None when nothing may be kept."""
        if not settings.REDIS_URL or time.monotonic() < self._retry_at:
            return None
        counter = self._counter()
        try:
            return counter, guard_call(settings.REDIS_URL, ("GET", counter))[0]
        except redis.RedisError:
            self._retry_at = time.monotonic() + REDIS_RETRY_SECONDS
            return None

    def get(self, key, version: tuple | None):
        """What was kept under ``key`` at ``version``, younger than ``max_age``; else None."""
        entry = self._entries.get(key) if version is not None else None
        if entry is None:
            return None
        kept_version, read_at, value = entry
        if kept_version != version or time.monotonic() - read_at > self.max_age:
            self._entries.pop(key, None)
            return None
        return value

    def read(self, key, load):
        """What ``load()`` gives, kept under ``key`` (a None is not kept)."""
        version = self.version()
        value = self.get(key, version)
        if value is None:
            value = load()
            if value is not None:
                self.put(key, version, value)
        return value

    def put(self, key, version: tuple | None, value) -> None:
        """Keep ``value``, read after the counter was ``version``."""
        if version is None:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (version, time.monotonic(), value)

    def bump(self) -> None:
        """Every process reads its entries again: from now, and once the current transaction commits."""
        self._increment()
        transaction.on_commit(self._increment, robust=True)

    def _increment(self) -> None:
        if not settings.REDIS_URL:
            return
        try:
            guard_call(settings.REDIS_URL, ("INCR", self._counter()))
        except redis.RedisError:
            # The entries then live out their max_age at most.
            logger.warning("Redis does not answer: the %s cache was not invalidated", self.name, exc_info=True)
