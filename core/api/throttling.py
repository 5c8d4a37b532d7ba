"""Per-key rate limits, exact across processes while Redis answers.

Each request increments a fixed-window counter. With ``REDIS_URL`` the counter is in Redis
(``INCR`` + ``EXPIRE`` in one ``MULTI``), shared by every process, so a limit is exact. While
Redis does not answer, each process counts on its own and allows its share of the limit,
``limit ÷ RATE_LIMIT_PROCESSES`` (at least one): set to the number of server processes, they
never allow more than the limit together (a caller whose requests all reach one process gets
that process's share only), and the API stays up. A process that found Redis down tries it again
a second later, not on every request. Without ``REDIS_URL`` (the embedded server, one process)
the process counts alone against the whole limit.
"""

import logging
import threading
import time
from functools import lru_cache

import redis
from django.conf import settings
from rest_framework.throttling import BaseThrottle

from core.api.permissions import request_scope
from core.env import parse_rate
from core.versioned import REDIS_RETRY_SECONDS, guard_call

logger = logging.getLogger(__name__)


class _LocalCounter:
    def __init__(self):
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, float]] = {}

    def incr(self, key: str, ttl: int) -> int:
        now = time.monotonic()
        with self._lock:
            if len(self._counts) > 100_000:
                self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
            count, expires = self._counts.get(key, (0, now + ttl))
            if expires <= now:
                count, expires = 0, now + ttl
            self._counts[key] = (count + 1, expires)
            return count + 1


class _RedisCounter:
    """Window counters in the Redis at ``url``; ``None`` for a request counted while it does not answer."""

    def __init__(self, url: str):
        self.url = url
        self._retry_at = 0.0
        self._failing = False

    def incr(self, key: str, ttl: int) -> int | None:
        if time.monotonic() < self._retry_at:
            return None
        try:
            *_, (count, _) = guard_call(self.url, ("MULTI",), ("INCR", key), ("EXPIRE", key, ttl + 1, "NX"), ("EXEC",))
            if isinstance(count, redis.RedisError):  # an error inside the transaction comes back as its reply
                raise count
        except redis.RedisError:
            self._retry_at = time.monotonic() + REDIS_RETRY_SECONDS
            if not self._failing:
                self._failing = True
                logger.warning("Redis does not answer: this process allows its share of each rate limit", exc_info=True)
            return None
        if self._failing:
            self._failing = False
            logger.info("Redis answers again: rate limits are counted there")
        return int(count)


_local_counter = _LocalCounter()


@lru_cache(maxsize=4)
def _redis_counter(url: str) -> _RedisCounter:
    return _RedisCounter(url)


def allows(key: str, *, limit: int, window_seconds: int) -> bool:
    """Count one request against ``key`` in the current window; whether it stays within ``limit``."""
    if settings.REDIS_URL:
        count = _redis_counter(settings.REDIS_URL).incr(key, window_seconds)
        if count is not None:
            return count <= limit
        limit = max(1, limit // settings.RATE_LIMIT_PROCESSES)
    return _local_counter.incr(key, window_seconds) <= limit


class ApiKeyRateThrottle(BaseThrottle):
    """Clients 100/min, miners 1000/min, signed-in users and anonymous callers 60/min by default."""

    def allow_request(self, request, view):
        if not settings.RATE_LIMITS_ENABLED:
            return True
        scope = request_scope(request)
        if getattr(request.auth, "scope", None) is not None:  # an API key
            limit_name, ident = scope, f"key:{request.auth.pk}"
        elif scope is not None:
            limit_name, ident = "user", f"user:{request.user.pk}"
        else:
            limit_name, ident = "anonymous", f"ip:{self.get_ident(request)}"
        limit, window = parse_rate(settings.RATE_LIMITS[limit_name])
        now = time.time()
        window_start = int(now // window) * window
        self._retry_after = max(1, int(window_start + window - now + 0.999))
        key = f"{settings.RATE_LIMIT_KEY_PREFIX}:{ident}:{window}:{window_start}"
        return allows(key, limit=limit, window_seconds=window)

    def wait(self):
        return self._retry_after
