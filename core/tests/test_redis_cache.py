import uuid

import pytest
from django.conf import settings

from core.backends.redis_cache import RedisCache

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="needs Redis (set REDIS_URL); CI always runs it")


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


def test_the_site_cache_is_this_one():
    if "redis_cache" not in settings.CACHES["default"]["BACKEND"]:
        pytest.skip("the suite's settings keep the cache in memory")
    assert settings.CACHES["default"]["BACKEND"] == "core.backends.redis_cache.RedisCache"
