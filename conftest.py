import contextlib
import os
import socket
import threading
import time
import uuid

import pytest
from django.conf import settings
from django.db import connection
from rest_framework.test import APIClient

from tests.factories import ApiKeyFactory

pytest_plugins = ["aitbc_site.testing.pages"]


def pytest_collection_modifyitems(config, items):
    if settings.IS_POSTGRES:
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL (set DATABASE_URL); CI always runs it")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _stop_wakeup_listener(django_db_setup):
    # Torn down before the test database is dropped: the LISTEN connection must be gone by then.
    yield
    from jobs.wakeup import hub

    hub.stop_listener()


@pytest.fixture(autouse=True)
def _isolated_cache_and_rate_limits(settings):
    # Counters and the cache live in Redis when REDIS_URL is set, and outlive the test database:
    # give every test its own namespace, or a mark keyed by a user id of an earlier run (ids start
    # over with each test database) would stand for this test's user.
    namespace = f"aitbc-test:{uuid.uuid4().hex}"
    settings.RATE_LIMIT_KEY_PREFIX = namespace
    settings.CACHES = {name: {**config, "KEY_PREFIX": namespace} for name, config in settings.CACHES.items()}


@pytest.fixture
def in_memory_channel_layer(settings):
    """Channel layer events stay in this process (the suite's settings use Redis when REDIS_URL is set)."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@pytest.fixture
def make_api(db):
    """``make_api(scope, username)`` → an APIClient sending that user's new key as ``X-Api-Key``."""

    def make(scope: str, username: str, *, miner_id: str | None = None) -> APIClient:
        api_key = ApiKeyFactory(user__username=username, scope=scope)
        api = APIClient()
        headers = {"HTTP_X_API_KEY": api_key.raw_key}
        if miner_id:
            headers["HTTP_X_MINER_ID"] = miner_id
        api.credentials(**headers)
        api.user, api.raw_key, api.api_key = api_key.user, api_key.raw_key, api_key
        return api

    return make


@pytest.fixture
def client_api(db, make_api):
    return make_api("client", "alice")


@pytest.fixture
def other_client_api(db, make_api):
    return make_api("client", "bob")


@pytest.fixture
def miner_api(db, make_api):
    return make_api("miner", "gpu-owner", miner_id="miner-1")


@pytest.fixture
def register_miner():
    def register(api: APIClient, models=("llama3.2",), **capabilities):
        body = {
            "capabilities": {"models": list(models), **capabilities},
            "concurrency": capabilities.get("max_concurrent_jobs", 1),
        }
        response = api.post("/v1/miners/register", body, format="json")
        assert response.status_code == 200, response.content
        return response.json()

    return register


@pytest.fixture
def submit_job():
    def submit(api: APIClient, prompt="hi", model="llama3.2", **extra):
        body = {"payload": {"type": "inference", "prompt": prompt, "model": model}, "ttl_seconds": 900, **extra}
        response = api.post("/v1/jobs", body, format="json")
        assert response.status_code == 201, response.content
        return response.json()

    return submit


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from inference.testing import TINY, build_tiny_gpt2

    return build_tiny_gpt2(tmp_path_factory.mktemp("models") / TINY)


@pytest.fixture
def tiny_model(db, tiny_model_dir):
    """The tiny GPT-2 as a catalog model."""
    from catalog.models import CatalogModel
    from inference.testing import TINY

    return CatalogModel.objects.create(
        name=TINY,
        task="text-generation",
        source_kind="directory",
        source=str(tiny_model_dir),
        default_max_tokens=16,
        max_tokens=2000,
    )


@pytest.fixture
def redis_server():
    """A Redis server of the test's own, which the test may stop (an outage) and start again."""
    from tests.processes import RedisServer

    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def serve(tmp_path):
    """``serve(models)``: daphne on the test database, as ``bin/start`` runs it, its in-process
    workers serving ``models`` (none: no workers, for external miners). Stopped after the test."""
    servers = []

    from aitbc_site.testing.processes import Daphne

    def start(models: str = "", **extra: str) -> Daphne:
        database = connection.settings_dict
        env = {
            **os.environ,
            "DEBUG": "true",
            "SECRET_KEY": "openai-test-secret-key",
            "DATABASE_URL": f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}",
            "DATABASE_POOL": "false",
            "AITBC_DATA_DIR": str(tmp_path),
            "AITBC_EMBEDDED_WORKERS": "true" if models else "false",
            "INFERENCE_MODELS": models,
            "MODEL_CACHE_DIR": str(tmp_path / "models"),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "RATE_LIMITS_ENABLED": "false",
            **extra,
        }
        env.pop("DRAMATIQ_BROKER_URL", None)
        if settings.REDIS_URL:
            env["REDIS_URL"] = settings.REDIS_URL
        server = Daphne(env, log_dir=tmp_path)
        servers.append(server)
        server.start(timeout=60)
        return server

    yield start
    for server in servers:
        server.stop(timeout=3)
        print(f"{server.name}'s log:\n" + server.log(5000))  # shown when the test fails


@pytest.fixture
def silent_redis():
    """The URL of a Redis that takes connections and never answers (a host that hangs); it closes each one
    after 5 s, so that a client without a timeout of its own fails rather than waits for ever."""
    listener = socket.create_server(("127.0.0.1", 0))
    taken = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                taken.append((time.monotonic(), listener.accept()[0]))
            while taken and time.monotonic() - taken[0][0] > 5:
                taken.pop(0)[1].close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    stop.set()
    thread.join()
    for _, accepted in taken:
        accepted.close()
    listener.close()


@pytest.fixture
def hanging_cache(settings, silent_redis):
    """The cache is Redis on a host that hangs (``silent_redis``)."""
    from core.backends import redis_cache

    redis_cache._retry_at.clear()
    settings.CACHES = {"default": {"BACKEND": "core.backends.redis_cache.RedisCache", "LOCATION": silent_redis}}
    yield
    redis_cache._retry_at.clear()
