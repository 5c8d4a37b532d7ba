"""Following jobs from an async view: joining their groups on a busy channel layer."""

import asyncio
import uuid

from channels.layers import InMemoryChannelLayer

from openai_compat import streams


class SlowLayer(InMemoryChannelLayer):
    """Joins groups as a busy process does under a burst of requests: seconds late."""

    async def group_add(self, group, channel):
        await asyncio.sleep(2.5)
        await super().group_add(group, channel)


def test_a_watch_waits_for_a_slow_layer_to_join_its_groups_instead_of_going_without_events(monkeypatch):
    layer = SlowLayer()
    monkeypatch.setattr(streams, "get_channel_layer", lambda: layer)
    job_ids = [str(uuid.uuid4()) for _ in range(2)]

    async def follow():
        watch = streams.JobWatch(job_ids, queue_timeout=10, response_timeout=10)
        started = asyncio.get_running_loop().time()
        await watch.__aenter__()
        joined = watch._layer is not None
        took = asyncio.get_running_loop().time() - started
        await watch.__aexit__(None, None, None)
        return joined, took

    joined, took = asyncio.run(follow())

    assert joined
    assert took < 4  # the groups are joined side by side
