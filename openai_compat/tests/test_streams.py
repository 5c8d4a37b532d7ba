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
        clock = asyncio.get_running_loop().time
        started = clock()
        await watch.__aenter__()
        entered = clock() - started
        await watch._joined()  # what the first updates() waits for
        joined = watch._layer is not None
        took = clock() - started
        await watch.__aexit__(None, None, None)
        return entered, joined, took

    entered, joined, took = asyncio.run(follow())

    assert entered < 1  # the jobs are queued while the groups are joined
    assert joined
    assert took < 4  # the groups are joined side by side


def test_a_watch_takes_no_status_older_than_one_it_took():
    job_id = str(uuid.uuid4())
    watch = streams.JobWatch([job_id], queue_timeout=10, response_timeout=10)

    def status(state: str, attempt: int) -> list:
        return list(watch._on_event({"type": "job.status", "job_id": job_id, "status": state, "attempt": attempt}))

    assert [type(update) for update in status("running", 1)] == [streams.Started]
    assert status("queued", 0) == []  # the submission's event, arriving after the claim's
    assert watch.status[job_id] == "running"
    status("queued", 1)  # re-queued: newer
    assert watch.status[job_id] == "queued"


def test_a_status_sent_while_queued_is_older_than_a_token_heard():
    job_id = str(uuid.uuid4())
    watch = streams.JobWatch([job_id], queue_timeout=10, response_timeout=10)

    list(watch._on_event({"type": "job.token", "job_id": job_id, "index": 0, "text": "Hi"}))
    list(watch._on_event({"type": "job.status", "job_id": job_id, "status": "queued", "attempt": 0}))

    assert watch.status[job_id] == "running"


def test_a_watch_started_before_its_jobs_were_queued_reads_no_rows_before_their_events(monkeypatch):
    monkeypatch.setattr(streams, "get_channel_layer", lambda: InMemoryChannelLayer())
    reads = []

    async def no_rows(function, **kwargs):
        reads.append(kwargs)
        return {}

    monkeypatch.setattr(streams, "in_thread", no_rows)
    job_id = str(uuid.uuid4())

    async def follow(fresh: bool):
        watch = streams.JobWatch([job_id], queue_timeout=10, response_timeout=10, fresh=fresh)
        await watch.__aenter__()
        ended = {"type": "job.status", "job_id": job_id, "status": "completed", "attempt": 1}
        asyncio.get_running_loop().call_later(0.1, watch._inbox.put_nowait, ended)
        updates = [update async for update in watch.updates()]
        await watch.__aexit__(None, None, None)
        return updates

    assert asyncio.run(follow(fresh=True)) == [streams.Ended(job_id)]
    assert reads == []
    asyncio.run(follow(fresh=False))
    assert reads == [{"job_ids": [job_id]}]  # a watch of jobs that may have ended before it reads them first
