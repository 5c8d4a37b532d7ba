"""The channel layer on a real Redis: many groups' messages in one send, a process's messages
received in batches, each channel's in the order sent."""

import asyncio
import uuid

import pytest
from django.conf import settings

from core import channel_layers
from core.channel_layers import RedisChannelLayer

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="needs Redis (set REDIS_URL); CI always runs it")


def new_layer(capacity=20_000) -> RedisChannelLayer:
    # Other test runs share the Redis database.
    return RedisChannelLayer(hosts=[settings.REDIS_URL], prefix=f"aitbc-test-{uuid.uuid4().hex}", capacity=capacity)


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
