"""PostgreSQL restarts under a running gunicorn: pooled connections the restart ended are
replaced, not handed to requests, and long polls are woken again once it is back."""

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.processes import PostgresCluster, Server, current_database_url, server_env

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

CLIENT_KEY = "aitbc-restart-test-client-key"
MINER_KEY = "aitbc-restart-test-miner-key"


@pytest.fixture(scope="module")
def cluster(django_db_setup, django_db_blocker):
    cluster = PostgresCluster()
    try:
        cluster.start()
        with django_db_blocker.unblock():
            cluster.create_database("aitbc", copy_of=current_database_url())
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(scope="module")
def gunicorn(cluster, tmp_path_factory):
    """gunicorn (two gthread workers, each with its connection pool) on the cluster."""
    directory = tmp_path_factory.mktemp("gunicorn")
    env = server_env(
        directory,
        database_url=cluster.url("aitbc"),
        DATABASE_POOL="true",
        CLIENT_API_KEYS=CLIENT_KEY,
        MINER_API_KEYS=MINER_KEY,
        RATE_LIMITS_ENABLED="false",
    )
    env.pop("REDIS_URL", None)
    server = Server("gunicorn", env=env, log_path=directory / "gunicorn.log")
    try:
        yield server
    finally:
        server.kill()


def test_requests_after_a_restart_all_succeed(cluster, gunicorn):
    client = httpx.Client(base_url=gunicorn.url, headers={"X-Api-Key": CLIENT_KEY}, timeout=15)
    # Every worker's pool holds several connections: concurrent requests open them.
    with ThreadPoolExecutor(8) as pool:
        warm = list(pool.map(lambda _: client.get("/v1/jobs").status_code, range(16)))
    assert set(warm) == {200}

    cluster.restart()

    statuses = [client.get(path).status_code for _ in range(15) for path in ("/v1/jobs", "/health/ready")]
    assert statuses == [200] * 30, gunicorn.log()


def test_long_poll_is_woken_after_a_restart(cluster, gunicorn):
    miner = httpx.Client(
        base_url=gunicorn.url, headers={"X-Api-Key": MINER_KEY, "X-Miner-ID": "restart-rig"}, timeout=30
    )
    client = httpx.Client(base_url=gunicorn.url, headers={"X-Api-Key": CLIENT_KEY}, timeout=15)
    assert miner.post("/v1/miners/register", json={"capabilities": {"models": ["m"]}}).status_code == 200
    # Each worker's wake-up listener is connected before the restart.
    assert miner.post("/v1/miners/poll", json={"max_wait_seconds": 0.1}).status_code == 204
    assert miner.post("/v1/miners/poll", json={"max_wait_seconds": 0.1}).status_code == 204

    cluster.restart()

    answers = []
    poll = threading.Thread(
        target=lambda: answers.append(miner.post("/v1/miners/poll", json={"max_wait_seconds": 20})), daemon=True
    )
    poll.start()
    submitted = client.post("/v1/jobs", json={"payload": {"type": "inference", "prompt": "hi", "model": "m"}})
    assert submitted.status_code == 201, submitted.text
    poll.join(timeout=10)
    assert answers, "the poll was not woken by the job's announcement"
    assert answers[0].status_code == 200
    assert answers[0].json()["job_id"] == submitted.json()["job_id"]


def test_a_request_made_while_the_database_is_down_waits_for_it(cluster, gunicorn):
    client = httpx.Client(base_url=gunicorn.url, headers={"X-Api-Key": CLIENT_KEY}, timeout=60)
    assert client.get("/v1/jobs").status_code == 200

    # Down for 12 s, longer than a restart takes: the request waits for the pool to reconnect
    # (DATABASE_POOL_TIMEOUT_SECONDS) instead of failing.
    cluster.stop()
    answers = []
    request = threading.Thread(target=lambda: answers.append(client.get("/v1/jobs")), daemon=True)
    request.start()
    threading.Event().wait(12)
    cluster.start()
    request.join(timeout=45)

    assert answers and answers[0].status_code == 200, gunicorn.log()
