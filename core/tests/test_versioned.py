"""The guard Redis connections the process keeps for the request path's counters."""

import multiprocessing
import threading
import time

import pytest
import redis

from core import versioned
from core.api import throttling


@pytest.fixture(autouse=True)
def _no_idle_connections():
    # Each test's Redis server is its own: the connections earlier tests left are not its.
    versioned._idle_guard_connections.clear()


def _connection(url: str):
    """The connection the next call to ``url`` takes."""
    return versioned._idle_guard_connections[url][-1]


def test_commands_sent_together_answer_in_order_on_one_kept_connection(redis_server):
    url = redis_server.url
    assert versioned.guard_call(url, ("SET", "k", "1"), ("INCR", "k"), ("GET", "k")) == [b"OK", 2, b"2"]
    kept = _connection(url)
    assert versioned.guard_call(url, ("GET", "k")) == [b"2"]
    assert _connection(url) is kept


def test_a_thread_takes_the_connection_an_ended_thread_used(redis_server):
    # Under daphne each request's sync work runs in a new thread: it must not open a connection.
    url = redis_server.url
    versioned.guard_call(url, ("PING",))
    kept = _connection(url)
    used = []
    thread = threading.Thread(target=lambda: used.append(versioned.guard_call(url, ("PING",)) and _connection(url)))
    thread.start()
    thread.join()
    assert used[0] is kept
    assert versioned._idle_guard_connections[url] == [kept]


def test_calls_at_once_each_have_a_connection_of_their_own(redis_server):
    url = redis_server.url
    versioned.guard_call(url, ("PING",))
    with versioned._guard_connection(url) as first, versioned._guard_connection(url) as second:
        assert first is not second
        assert versioned._idle_guard_connections[url] == []
    assert sorted(map(id, versioned._idle_guard_connections[url])) == sorted([id(first), id(second)])


def test_idle_connections_beyond_the_most_kept_are_closed(redis_server, monkeypatch):
    url = redis_server.url
    monkeypatch.setattr(versioned, "GUARD_IDLE_MAX", 1)
    with versioned._guard_connection(url) as first, versioned._guard_connection(url) as second:
        first.send_command("PING"), second.send_command("PING")
        assert first.read_response() == second.read_response() == b"PONG"
    assert versioned._idle_guard_connections[url] == [second]
    assert first._sock is None


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
