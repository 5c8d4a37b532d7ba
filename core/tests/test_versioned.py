"""The guard Redis connection each thread keeps for the request path's counters."""

import multiprocessing
import threading
import time

import pytest
import redis

from core import versioned
from core.api import throttling
from tests.processes import RedisServer


@pytest.fixture
def redis_server():
    server = RedisServer()
    server.start()
    yield server
    server.stop()


def _connection(url: str):
    return versioned._guard_connections.by_url[url][1]


def test_commands_sent_together_answer_in_order_on_one_kept_connection(redis_server):
    url = redis_server.url
    assert versioned.guard_call(url, ("SET", "k", "1"), ("INCR", "k"), ("GET", "k")) == [b"OK", 2, b"2"]
    kept = _connection(url)
    assert versioned.guard_call(url, ("GET", "k")) == [b"2"]
    assert _connection(url) is kept


def test_each_thread_keeps_its_own_connection(redis_server):
    url = redis_server.url
    versioned.guard_call(url, ("PING",))
    other = []
    thread = threading.Thread(target=lambda: other.append(versioned.guard_call(url, ("PING",)) and _connection(url)))
    thread.start()
    thread.join()
    assert other[0] is not _connection(url)


def _child_call(url: str, pipe) -> None:
    pipe.send((versioned.guard_call(url, ("INCR", "forked"))[0], id(_connection(url)), id(inherited)))


def test_a_forked_process_opens_its_own_connection(redis_server):
    url = redis_server.url
    versioned.guard_call(url, ("SET", "forked", "0"))
    global inherited
    inherited = _connection(url)
    parent, child = multiprocessing.get_context("fork").Pipe()
    process = multiprocessing.get_context("fork").Process(target=_child_call, args=(url, child))
    process.start()
    assert parent.poll(30)
    count, child_connection, parents = parent.recv()
    process.join(timeout=10)
    assert count == 1 and child_connection != parents
    assert versioned.guard_call(url, ("INCR", "forked")) == [2]  # the parent's connection still answers


def test_a_failed_call_drops_the_connection_and_the_next_one_reconnects(redis_server):
    url = redis_server.url
    versioned.guard_call(url, ("SET", "k", "not a number"))
    with pytest.raises(redis.ResponseError):
        versioned.guard_call(url, ("INCR", "k"), ("GET", "k"))  # the GET's reply is never read
    assert versioned.guard_call(url, ("GET", "k")) == [b"not a number"]
    redis_server.stop()
    with pytest.raises(redis.ConnectionError):
        versioned.guard_call(url, ("GET", "k"))
    redis_server.start()
    assert versioned.guard_call(url, ("PING",)) == [b"PONG"]


def test_an_error_inside_the_limit_transaction_counts_the_request_in_process(redis_server):
    counter = throttling._RedisCounter(redis_server.url)
    versioned.guard_call(redis_server.url, ("SET", "aitbc-test:not-a-counter", "x"))
    assert counter.incr("aitbc-test:not-a-counter", 60) is None
    assert counter.incr("aitbc-test:a-counter", 60) is None  # asked again only a second later


def test_a_connection_the_server_closed_while_idle_is_opened_again_before_sending(redis_server):
    url = redis_server.url
    versioned.guard_call(url, ("CONFIG", "SET", "timeout", "1"))
    versioned.guard_call(url, ("SET", "idle", "0"))
    time.sleep(2.5)  # the server drops idle clients after a second, checked in its background cycle
    assert versioned.guard_call(url, ("INCR", "idle")) == [1]
