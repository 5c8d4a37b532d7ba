"""Django's Redis cache, keeping one redis-py client per server.

Django's ``RedisCacheClient`` builds a ``redis.Redis`` for every operation, and each one fills a
table of about 170 response callbacks: more CPU than the round trip itself. A ``redis.Redis`` is
safe to share between threads (its connections come from the pool), so one is kept per
connection pool and every operation of this cache uses it.
"""

from django.core.cache.backends import redis as django_redis


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
        super().__init__(server, params)
        self._class = RedisCacheClient
