"""Rate limits of two server processes sharing one Redis, before, during and after an outage."""

import multiprocessing
import time

import pytest

from core.api import throttling

REQUESTS_PER_PROCESS = 125
LIMIT = 100


def _serve(connection) -> None:
    """A server process: for each key it is sent, count REQUESTS_PER_PROCESS requests; answer how many passed."""
    while (key := connection.recv()) is not None:
        allowed = [throttling.allows(key, limit=LIMIT, window_seconds=3600) for _ in range(REQUESTS_PER_PROCESS)]
        connection.send(sum(allowed))


@pytest.fixture
def two_processes(redis_server, settings):
    settings.REDIS_URL = redis_server.url
    settings.RATE_LIMIT_PROCESSES = 2
    fork = multiprocessing.get_context("fork")
    pipes = [fork.Pipe() for _ in range(2)]
    processes = [fork.Process(target=_serve, args=(child,), daemon=True) for _, child in pipes]
    for process in processes:
        process.start()

    def passed(key: str) -> int:
        """250 requests on ``key``, half through each process: how many passed."""
        for parent, _ in pipes:
            parent.send(f"{settings.RATE_LIMIT_KEY_PREFIX}:{key}")
        assert all(parent.poll(60) for parent, _ in pipes), "a server process did not answer"
        return sum(parent.recv() for parent, _ in pipes)

    yield passed
    for parent, _ in pipes:
        parent.send(None)
    for process in processes:
        process.join(timeout=10)


def test_two_processes_never_pass_more_than_the_limit_before_during_or_after_a_redis_outage(
    redis_server, two_processes
):
    assert two_processes("before") == LIMIT

    redis_server.stop()
    assert two_processes("during") == LIMIT  # each process allows half the limit

    redis_server.start()
    time.sleep(throttling.REDIS_RETRY_SECONDS)
    assert two_processes("after") == LIMIT
