"""Per-key rate limits, exact across processes.

Each request increments a fixed-window counter: in Redis (``INCR`` + ``EXPIRE`` in one
``MULTI``) when ``REDIS_URL`` is set, so every process shares the count; otherwise in this
process, which in the embedded setup is the only one.
"""

import logging
import threading
import time
from functools import lru_cache

import redis
from django.conf import settings
from rest_framework.throttling import BaseThrottle

from accounts.models import ApiKey
from aitbc_site.api.permissions import request_scope
from aitbc_site.env import parse_rate


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


_local_counter = _LocalCounter()
logger = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)


def hit(key: str, window_seconds: int) -> int:
    """Count one request against ``key`` in the current window; return the window's count."""
    if settings.REDIS_URL:
        try:
            pipe = _redis(settings.REDIS_URL).pipeline(transaction=True)
            pipe.incr(key)
            pipe.expire(key, window_seconds + 1, nx=True)
            count, _ = pipe.execute()
            return int(count)
        except redis.RedisError:
            # Limits are a guard, not the service: without Redis, count in this process.
            logger.warning("rate-limit counter unavailable in Redis; counting in this process", exc_info=True)
    return _local_counter.incr(key, window_seconds)


class ApiKeyRateThrottle(BaseThrottle):
    """Clients 100/min, miners 1000/min, signed-in users and anonymous callers 60/min by default."""

    def allow_request(self, request, view):
        if not settings.RATE_LIMITS_ENABLED:
            return True
        scope = request_scope(request)
        if isinstance(request.auth, ApiKey):
            limit_name, ident = scope, f"key:{request.auth.pk}"
        elif scope is not None:
            limit_name, ident = "user", f"user:{request.user.pk}"
        else:
            limit_name, ident = "anonymous", f"ip:{self.get_ident(request)}"
        limit, window = parse_rate(settings.RATE_LIMITS[limit_name])
        now = time.time()
        window_start = int(now // window) * window
        self._retry_after = max(1, int(window_start + window - now + 0.999))
        count = hit(f"{settings.RATE_LIMIT_KEY_PREFIX}:{ident}:{window}:{window_start}", window)
        return count <= limit

    def wait(self):
        return self._retry_after
