"""The site's Redis cache: one client per server, and Redis going away costs requests nothing (reads
miss, writes are skipped, nothing raises)."""

import time
import uuid

import pytest
from django.conf import settings
from django.core.cache import caches

from core import versioned
from core.backends import redis_cache
from core.backends.redis_cache import RedisCache

needs_redis = pytest.mark.skipif(not settings.REDIS_URL, reason="needs Redis (set REDIS_URL); CI always runs it")


@needs_redis
def test_every_operation_uses_one_client_per_server():
    cache = RedisCache(settings.REDIS_URL, {"KEY_PREFIX": f"aitbc-test-{uuid.uuid4().hex}"})
    client = cache._cache.get_client("a")
    assert cache._cache.get_client("b", write=True) is client
    cache.set("k", {"v": 1}, 30)
    assert cache.get_many(["k", "missing"]) == {"k": {"v": 1}}
    assert cache.add("k", 2, 30) is False
    cache.delete("k")
    assert cache.get("k") is None
    assert cache._cache.get_client() is client


@needs_redis
def test_the_site_cache_is_this_one():
    if "redis_cache" not in settings.CACHES["default"]["BACKEND"]:
        pytest.skip("the suite's settings keep the cache in memory")
    assert settings.CACHES["default"]["BACKEND"] == "core.backends.redis_cache.RedisCache"


def use_cache(settings, url: str):
    redis_cache._retry_at.clear()
    settings.CACHES = {"default": {"BACKEND": "core.backends.redis_cache.RedisCache", "LOCATION": url}}
    return caches["default"]


def test_a_cache_whose_redis_is_down_misses_and_skips_writes_then_works_once_it_is_back(settings, redis_server):
    cache = use_cache(settings, redis_server.url)
    cache.set("kept", 1)
    redis_server.stop()

    assert cache.get("kept", "missed") == "missed"
    assert cache.get_many(["kept"]) == {}
    assert cache.has_key("kept") is False
    assert cache.add("other", 2) is False
    cache.set("other", 2)
    cache.delete("kept")

    redis_server.start()
    time.sleep(versioned.REDIS_RETRY_SECONDS)
    cache.set("other", 3)
    assert cache.get("other") == 3


def test_a_cache_whose_redis_hangs_answers_within_about_a_second_then_stops_asking(settings, silent_redis):
    cache = use_cache(settings, silent_redis)

    started = time.monotonic()
    assert cache.get("key") is None
    first = time.monotonic() - started
    started = time.monotonic()
    cache.set("key", 1)
    assert cache.get("key") is None
    again = time.monotonic() - started

    assert first < 3
    assert again < 0.1  # Redis is not asked again for REDIS_RETRY_SECONDS
