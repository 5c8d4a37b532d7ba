"""The channel layer on a real Redis: many groups' messages in one send, a process's messages
received in batches, each channel's in the order sent."""

import asyncio
import signal
import subprocess
import time
import uuid

import pytest
from django.conf import settings

from core import channel_layers
from core.channel_layers import RedisChannelLayer

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="needs Redis (set REDIS_URL); CI always runs it")


def new_layer(capacity=20_000) -> RedisChannelLayer:
    # Connected as the settings connect it; other test runs share the Redis database.
    hosts = settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"]
    return RedisChannelLayer(hosts=hosts, prefix=f"aitbc-test-{uuid.uuid4().hex}", capacity=capacity)


def layer_at(url: str) -> RedisChannelLayer:
    """A layer on a Redis of the test's own, connected as the settings connect it."""
    return RedisChannelLayer(hosts=[{"address": url, **channel_layers.connection_options(url)}])


async def joined(layer, groups: list[str]) -> dict[str, str]:
    channels = {}
    for group in groups:
        channels[group] = await layer.new_channel()
        await layer.group_add(group, channels[group])
    return channels


async def receive_all(layer, channel: str, count: int) -> list[dict]:
    return [await asyncio.wait_for(layer.receive(channel), 5) for _ in range(count)]


def test_many_groups_get_their_messages_in_order_from_one_send():
    async def scenario():
        layer = new_layer()
        groups = [f"job-{index}" for index in range(50)]
        channels = await joined(layer, groups)
        second = await layer.new_channel()
        await layer.group_add(groups[0], second)
        by_group = {group: [{"type": "t", "group": group, "n": n} for n in range(20)] for group in groups}
        by_group["nobody"] = [{"type": "t"}]

        watched = await layer.group_send_many(by_group)
        # Sent after the first, scored after it too, however close.
        await layer.group_send_many({groups[0]: [{"type": "t", "group": groups[0], "n": 20}]})

        received = {group: await receive_all(layer, channel, 20) for group, channel in channels.items()}
        return watched, received, await receive_all(layer, second, 21), await receive_all(layer, channels[groups[0]], 1)

    watched, received, second, late = asyncio.run(scenario())

    assert sorted(watched) == sorted(f"job-{index}" for index in range(50))
    for group, messages in received.items():
        assert messages == [{"type": "t", "group": group, "n": n} for n in range(20)]
    assert [m["n"] for m in second] == list(range(21))
    assert [m["n"] for m in late] == [20]


def test_a_message_is_built_only_for_a_group_with_members():
    built = []

    def build(group):
        def message():
            built.append(group)
            return {"type": "t"}

        return message

    async def scenario():
        layer = new_layer()
        channels = await joined(layer, ["watched"])
        await layer.group_send_many({"watched": [build("watched")], "unwatched": [build("unwatched")]})
        return await receive_all(layer, channels["watched"], 1)

    assert asyncio.run(scenario()) == [{"type": "t"}]
    assert built == ["watched"]


def test_a_process_receives_what_waits_for_its_channels_in_one_fetch(monkeypatch):
    fetches = []
    fetch = RedisChannelLayer._fetch

    async def counting_fetch(self, *args):
        fetches.append(1)
        await fetch(self, *args)

    monkeypatch.setattr(RedisChannelLayer, "_fetch", counting_fetch)

    async def scenario():
        layer = new_layer()
        channels = await joined(layer, [f"job-{index}" for index in range(200)])
        await layer.group_send_many({group: [{"type": "t", "n": n} for n in range(4)] for group in channels})
        return {group: [m["n"] for m in await receive_all(layer, channel, 4)] for group, channel in channels.items()}

    received = asyncio.run(scenario())

    assert received == {group: [0, 1, 2, 3] for group in received}
    assert len(fetches) == 1


def test_a_fetch_whose_answer_never_came_puts_its_messages_back():
    async def scenario():
        layer = new_layer()
        [channel] = (await joined(layer, ["job"])).values()
        await layer.group_send_many({"job": [{"type": "t", "n": n} for n in range(3)]})
        # As a receive cancelled while its fetch was in flight leaves it: popped into the backup.
        key = layer.prefix + layer.non_local_name(channel)
        script = layer.connection(0).register_script(channel_layers._FETCH)
        assert len(await script(keys=[key, layer._backup_channel_name(key)], args=[0, 100, 60])) == 3
        layer._fetch_unanswered.add(key)
        return [m["n"] for m in await receive_all(layer, channel, 3)]

    assert asyncio.run(scenario()) == [0, 1, 2]


def test_receives_cancelled_together_end_at_once():
    """Two sockets of one process close together: the first's receive, fetching for both, is
    cancelled, then the second's, at each moment of its taking the fetch over. Each ends at once;
    a cancellation lost in a write would leave a receive popping for ever."""

    async def close_both(delay: float) -> float:
        layer = new_layer()
        receives = [asyncio.ensure_future(layer.receive(await layer.new_channel())) for _ in range(2)]
        await asyncio.sleep(0.05)
        receives[0].cancel()
        await asyncio.sleep(delay)
        receives[1].cancel()
        started = time.monotonic()
        await asyncio.wait(receives, timeout=3)
        return time.monotonic() - started

    async def scenario():
        return [await close_both(step / 4000) for step in range(24)]

    assert max(asyncio.run(scenario())) < 1


def test_a_receive_from_a_redis_that_stopped_answering_fails(redis_server, monkeypatch):
    """A Redis frozen with its connections open (its host still answers TCP for it) ends a
    waiting receive with TimeoutError, which closes a socket with 4503, within the pop's own wait
    plus ``DEAD_REDIS_SECONDS``."""
    monkeypatch.setattr(channel_layers, "DEAD_REDIS_SECONDS", 1)

    async def scenario():
        layer = layer_at(redis_server.url)
        layer.brpop_timeout = 1
        receive = asyncio.ensure_future(layer.receive(await layer.new_channel()))
        await asyncio.sleep(0.2)
        redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(10):
                    await receive
            return time.monotonic() - started
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)

    assert asyncio.run(scenario()) < 5


def test_a_receive_begun_on_a_redis_that_stopped_answering_fails(redis_server, monkeypatch):
    """A receive whose first fetch meets a frozen Redis on a connection already open ends with
    TimeoutError as one blocked in its pop does."""
    monkeypatch.setattr(channel_layers, "DEAD_REDIS_SECONDS", 1)

    async def scenario():
        layer = layer_at(redis_server.url)
        layer.brpop_timeout = 1
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "hello"})
        await layer.receive(channel)
        redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(10):
                    await layer.receive(channel)
            return time.monotonic() - started
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)

    assert asyncio.run(scenario()) < 5


def test_a_layer_on_a_unix_socket_sends_and_receives(tmp_path):
    path = tmp_path / "redis.sock"
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(path), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"unix://{path}"

        async def scenario():
            layer = layer_at(url)
            [channel] = (await joined(layer, ["job"])).values()
            await layer.group_send_many({"job": [{"type": "t", "n": 1}]})
            return await receive_all(layer, channel, 1)

        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert asyncio.run(scenario()) == [{"type": "t", "n": 1}]
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_messages_past_a_channels_capacity_are_dropped():
    async def scenario():
        layer = new_layer(capacity=3)
        [channel] = (await joined(layer, ["job"])).values()
        await layer.group_send_many({"job": [{"type": "t", "n": n} for n in range(5)]})
        received = await receive_all(layer, channel, 3)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(layer.receive(channel), 0.3)
        return [m["n"] for m in received]

    assert asyncio.run(scenario()) == [0, 1, 2]


def test_a_send_leaves_out_the_channels_it_is_told_to_skip():
    async def scenario():
        layer = new_layer()
        channels = await joined(layer, ["job", "other"])
        handed_over = await layer.new_channel()  # a process's local watch, handed the messages itself
        await layer.group_add("job", handed_over)
        await layer.group_send_many(
            {"job": [{"type": "t", "n": n} for n in range(3)], "other": [{"type": "t", "n": 0}]},
            skip=frozenset({handed_over, channels["other"]}),
        )
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(layer.receive(handed_over), 0.3)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(layer.receive(channels["other"]), 0.3)
        return await receive_all(layer, channels["job"], 3)

    assert [m["n"] for m in asyncio.run(scenario())] == [0, 1, 2]


def test_groups_with_members_names_the_groups_a_send_would_reach_from_a_plain_thread():
    layer = new_layer()

    async def join():
        await joined(layer, ["watched"])
        # A member that joined past the group expiry: a send drops it, and so does this look.
        stale = await layer.new_channel()
        key = layer._group_key("stale")
        await layer.connection(0).zadd(key, {stale: time.time() - layer.group_expiry - 10})

    asyncio.run(join())

    assert layer.groups_with_members(["watched", "stale", "nobody"]) == {"watched"}
    assert layer.groups_with_members([]) == set()


def test_groups_with_members_asks_only_hosts_given_as_urls():
    layer = RedisChannelLayer(hosts=[("127.0.0.1", 6379)], prefix=f"aitbc-test-{uuid.uuid4().hex}")

    with pytest.raises(ValueError):
        layer.groups_with_members(["job"])
