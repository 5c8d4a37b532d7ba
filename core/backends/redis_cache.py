"""Django's Redis cache, keeping one redis-py client per server, and guarded as the request path's
other uses of Redis are (``core.versioned``).

Django's ``RedisCacheClient`` builds a ``redis.Redis`` for every operation, and each one fills a
table of about 170 response callbacks: more CPU than the round trip itself. A ``redis.Redis`` is
safe to share between threads (its connections come from the pool), so one is kept per
connection pool and every operation of this cache uses it.

What the cache holds can always be computed again, so Redis failing must not fail a request: a
command waits at most a second (connecting included) and is not retried, and a failure is
logged, never raised. A read then finds nothing (its caller computes the value from the database)
and a write is skipped; for ``REDIS_RETRY_SECONDS`` after a failure the process does not try
Redis at all, so an outage costs each request nothing. ``incr`` and ``clear``, which no request
uses, are not guarded.
"""

import logging
import time

import redis
from django.core.cache.backends import redis as django_redis
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.versioned import REDIS_RETRY_SECONDS

logger = logging.getLogger(__name__)

# Per server (the cache's LOCATION): Redis is not tried again before this time.
_retry_at: dict[str, float] = {}


class RedisCacheClient(django_redis.RedisCacheClient):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._clients = {}

    def get_client(self, key=None, *, write=False):
        pool = self._get_connection_pool(write)
        client = self._clients.get(pool)
        if client is None:
            client = self._clients[pool] = self._client(connection_pool=pool)
        return client


class RedisCache(django_redis.RedisCache):
    def __init__(self, server, params):
        options = {
            "socket_connect_timeout": 1,
            "socket_timeout": 1,
            "retry": Retry(NoBackoff(), 0),
            **params.get("OPTIONS", {}),
        }
        super().__init__(server, {**params, "OPTIONS": options})
        self._class = RedisCacheClient
        self._location = server if isinstance(server, str) else ",".join(server)

    def _guarded(self, fallback, operation, *args):
        if time.monotonic() < _retry_at.get(self._location, 0.0):
            return fallback
        try:
            return operation(*args)
        except redis.RedisError as error:
            _retry_at[self._location] = time.monotonic() + REDIS_RETRY_SECONDS
            logger.warning("the cache (Redis) does not answer, going without it: %r", error)
            return fallback

    def get(self, key, default=None, version=None):
        return self._guarded(default, super().get, key, default, version)

    def get_many(self, keys, version=None):
        return self._guarded({}, super().get_many, keys, version)

    def has_key(self, key, version=None):
        return self._guarded(False, super().has_key, key, version)

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        return self._guarded(False, super().add, key, value, timeout, version)

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        return self._guarded(None, super().set, key, value, timeout, version)

    def set_many(self, data, timeout=DEFAULT_TIMEOUT, version=None):
        return self._guarded(list(data), super().set_many, data, timeout, version)

    def touch(self, key, timeout=DEFAULT_TIMEOUT, version=None):
        return self._guarded(False, super().touch, key, timeout, version)

    def delete(self, key, version=None):
        return self._guarded(False, super().delete, key, version)

    def delete_many(self, keys, version=None):
        return self._guarded(None, super().delete_many, keys, version)
