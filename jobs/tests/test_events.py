import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

import pytest
import redis
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings as django_settings

from jobs import events
from jobs.models import Job

pytestmark = pytest.mark.usefixtures("in_memory_channel_layer")
needs_redis = pytest.mark.skipif(not django_settings.REDIS_URL, reason="needs Redis (set REDIS_URL); CI always runs it")


@dataclass(frozen=True)
class TokenEvent:
    """Shaped like ``inference.engine.TokenEvent``."""

    key: str
    index: int
    text: str
    completion_tokens: int
    max_tokens: int | None


def use_redis_layer(settings) -> None:
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "core.channel_layers.RedisChannelLayer",
            # Other test runs share the Redis database.
            "CONFIG": {"hosts": [settings.REDIS_URL], "prefix": f"aitbc-test-{uuid.uuid4().hex}"},
        }
    }


@pytest.fixture(params=["memory", pytest.param("redis", marks=needs_redis)])
def layer_kind(request, settings):
    if request.param == "redis":
        use_redis_layer(settings)
    return request.param


def receive_on_groups(group_names, publish, *, count):
    """Join a fresh channel to each group, run ``publish`` in a worker thread, collect ``count`` messages per group."""

    async def scenario():
        layer = get_channel_layer()
        channels = {}
        for group in group_names:
            channels[group] = await layer.new_channel()
            await layer.group_add(group, channels[group])
        await sync_to_async(publish, thread_sensitive=False)()
        received = {}
        for group, channel in channels.items():
            received[group] = [await asyncio.wait_for(layer.receive(channel), 2) for _ in range(count)]
            await layer.group_discard(group, channel)
        return received

    return async_to_sync(scenario)()


def test_token_events_arrive_on_each_jobs_group_in_order(layer_kind):
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    tokens = [
        TokenEvent(key=first, index=0, text="Hel", completion_tokens=1, max_tokens=4),
        TokenEvent(key=second, index=0, text="Bon", completion_tokens=1, max_tokens=10),
        TokenEvent(key=first, index=1, text="lo", completion_tokens=2, max_tokens=4),
        TokenEvent(key=second, index=1, text="jour", completion_tokens=2, max_tokens=10),
        TokenEvent(key=first, index=2, text=" there", completion_tokens=3, max_tokens=4),
        TokenEvent(key=second, index=2, text="!", completion_tokens=3, max_tokens=10),
    ]

    received = receive_on_groups(
        [events.job_group(first), events.job_group(second)], lambda: events.publish_token_events(tokens), count=3
    )

    assert received[events.job_group(first)] == [
        {"type": "job.token", "job_id": first, "index": 0, "text": "Hel", "progress": 25},
        {"type": "job.token", "job_id": first, "index": 1, "text": "lo", "progress": 50},
        {"type": "job.token", "job_id": first, "index": 2, "text": " there", "progress": 75},
    ]
    assert [m["text"] for m in received[events.job_group(second)]] == ["Bon", "jour", "!"]


def test_token_events_are_sent_in_one_hop(monkeypatch):
    hops = []
    original = events._send_all

    async def counting_send_all(layer, messages):
        hops.append(len(messages))
        await original(layer, messages)

    monkeypatch.setattr(events, "_send_all", counting_send_all)
    job_ids = [str(uuid.uuid4()) for _ in range(3)]

    events.publish_token_events([TokenEvent(job_id, 0, "x", 1, 8) for job_id in job_ids])
    events.flush()

    assert hops == [3]


def test_token_events_accept_tuples_and_objects_with_job_id():
    @dataclass
    class WithJobId:
        job_id: str
        index: int
        text: str
        completion_tokens: int
        max_tokens: int

    job_id = str(uuid.uuid4())

    received = receive_on_groups(
        [events.job_group(job_id)],
        lambda: events.publish_token_events([(job_id, 0, "a", 1, 2), WithJobId(job_id, 1, "b", 2, 2)]),
        count=2,
    )

    assert [(m["index"], m["text"]) for m in received[events.job_group(job_id)]] == [(0, "a"), (1, "b")]


@pytest.mark.parametrize(
    "completion_tokens, max_tokens, progress",
    [(1, 3, 33), (3, 3, 99), (50, 3, 99), (0, 3, 0), (5, None, None), (5, 0, None)],
)
def test_token_progress_is_a_percent_of_max_tokens_below_100(completion_tokens, max_tokens, progress):
    event = events.job_token_event(
        job_id="j", index=0, text="", completion_tokens=completion_tokens, max_tokens=max_tokens
    )
    assert event["progress"] == progress


def test_job_group_names_the_job_by_its_canonical_uuid():
    job_id = uuid.uuid4()
    assert events.job_group(job_id) == events.job_group(str(job_id)) == f"job-{job_id}"
    assert events.job_group(job_id.hex) == f"job-{job_id}"


def test_status_event_has_the_rest_job_views_fields(client_api, submit_job):
    job_id = submit_job(client_api, prompt="hello")["job_id"]
    view = client_api.get(f"/v1/jobs/{job_id}").json()

    event = events.job_status_event(Job.objects.get(pk=job_id))

    assert event["type"] == "job.status"
    assert event["job_type"] == view.pop("type") == "inference"
    del view["payload"], view["queue_position"], view["estimated_wait_seconds"], view["is_possible"]
    assert {k: v for k, v in event.items() if k in view} == view
    assert "payload" not in event


def test_a_claimed_paid_jobs_status_event_shows_its_payment_without_reading_the_database(
    monkeypatch,
    client_api,
    miner_api,
    register_miner,
    submit_job,
    django_assert_num_queries,
    django_capture_on_commit_callbacks,
):
    # Events are built where they are sent, on an event loop that may not query: a claim reads
    # each job's payment with it.
    from jobs.services import job_claim
    from miners.models import Miner

    submitted = submit_job(client_api, payment_amount="2")
    register_miner(miner_api)
    published = []
    monkeypatch.setattr(events, "publish_job_statuses", published.extend)

    with django_capture_on_commit_callbacks(execute=True):
        [claimed] = job_claim(miner=Miner.objects.get())

    assert [job.pk for job in published] == [claimed.pk]
    assert Job.payment.is_cached(claimed)
    with django_assert_num_queries(0):
        event = events.job_status_event(published[0])
    assert (event["status"], event["payment_id"], event["payment_status"]) == (
        "running",
        submitted["payment_id"],
        "escrowed",
    )


@pytest.mark.django_db(transaction=True)
def test_publish_job_status_reaches_the_jobs_group(layer_kind, client_api, submit_job):
    job = Job.objects.get(pk=submit_job(client_api)["job_id"])
    Job.objects.filter(pk=job.pk).update(status="failed", error_code="INFERENCE_FAILED", error_message="boom")
    job.refresh_from_db()

    received = receive_on_groups([events.job_group(job.pk)], lambda: events.publish_job_status(job), count=1)

    [event] = received[events.job_group(job.pk)]
    assert event["type"] == "job.status"
    assert (event["job_id"], event["status"], event["state"]) == (str(job.pk), "failed", "FAILED")
    assert (event["error_code"], event["error"], event["result"]) == ("INFERENCE_FAILED", "boom", None)


def test_publish_job_statuses_sends_each_job_its_own_status_in_one_hop(monkeypatch, client_api, submit_job):
    jobs = [Job.objects.get(pk=submit_job(client_api, prompt=prompt)["job_id"]) for prompt in ("a", "b")]
    hops = []
    original = events._send_all

    async def counting_send_all(layer, messages):
        hops.append(len(messages))
        await original(layer, messages)

    monkeypatch.setattr(events, "_send_all", counting_send_all)

    received = receive_on_groups(
        [events.job_group(job.pk) for job in jobs], lambda: events.publish_job_statuses(jobs), count=1
    )

    assert hops == [2]
    assert [received[events.job_group(job.pk)][0]["job_id"] for job in jobs] == [str(job.pk) for job in jobs]


def test_publish_from_async_code_does_not_block_its_loop():
    job_id = str(uuid.uuid4())

    async def scenario():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(events.job_group(job_id), channel)
        events.publish_token_events([TokenEvent(job_id, 0, "x", 1, 4)])
        return await asyncio.wait_for(layer.receive(channel), 2)

    assert async_to_sync(scenario)()["text"] == "x"


def test_publish_functions_swallow_channel_layer_errors(monkeypatch, caplog, client_api, submit_job):
    job = Job.objects.get(pk=submit_job(client_api)["job_id"])

    async def failing_group_send(group, message):
        raise ConnectionError("redis is down")

    monkeypatch.setattr(get_channel_layer(), "group_send", failing_group_send)
    with caplog.at_level(logging.WARNING, logger="jobs.events"):
        events.publish_job_status(job)
        events.publish_job_statuses([job, job])
        events.publish_token_events([TokenEvent(str(job.pk), 0, "x", 1, 4)])
        events.flush()

    assert any("redis is down" in r.getMessage() for r in caplog.records)


def test_publishing_gives_up_on_a_layer_that_hangs(monkeypatch, caplog):
    async def hanging_group_send(group, message):
        await asyncio.sleep(30)

    monkeypatch.setattr(events, "PUBLISH_TIMEOUT_SECONDS", 0.1)
    monkeypatch.setattr(get_channel_layer(), "group_send", hanging_group_send)
    with caplog.at_level(logging.WARNING, logger="jobs.events"):
        events.publish_token_events([TokenEvent(str(uuid.uuid4()), 0, "x", 1, 4)])
        events.flush()

    assert "not published" in caplog.text


def test_malformed_token_events_are_logged_not_raised(caplog):
    with caplog.at_level(logging.WARNING, logger="jobs.events"):
        events.publish_token_events([("not-a-uuid", 0, "x", 1, 4)])

    assert "not published" in caplog.text


def test_publishing_does_not_wait_for_the_layer_and_keeps_the_order(monkeypatch):
    sent = []

    async def slow_group_send(group, message):
        await asyncio.sleep(0.05)
        sent.append(message["index"])

    monkeypatch.setattr(get_channel_layer(), "group_send", slow_group_send)
    job_id = str(uuid.uuid4())
    started = time.monotonic()
    for index in range(5):
        events.publish_token_events([TokenEvent(job_id, index, "x", index + 1, 8)])
    assert time.monotonic() - started < 0.1  # five sends of 50 ms each did not hold the caller
    events.flush()
    assert sent == [0, 1, 2, 3, 4]


def test_batches_handed_over_during_a_send_go_out_together_in_order(monkeypatch):
    sends, gate = [], asyncio.Event()

    async def gated_send_all(layer, messages):
        sends.append([message["index"] for _, message in messages])
        if len(sends) == 1:
            await gate.wait()  # the first send is under way while more batches arrive

    monkeypatch.setattr(events, "_send_all", gated_send_all)
    job_id = str(uuid.uuid4())
    events.publish_token_events([TokenEvent(job_id, 0, "x", 1, 8)])
    deadline = time.monotonic() + 2
    while not sends and time.monotonic() < deadline:
        time.sleep(0.001)
    for index in (1, 2, 3):
        events.publish_token_events([TokenEvent(job_id, index, "x", index + 1, 8)])
    loop = events._publishing_loop()
    loop.call_soon_threadsafe(gate.set)
    events.flush()

    assert sends == [[0], [1, 2, 3]]


@needs_redis
def test_on_redis_only_watched_jobs_groups_are_sent_to_all_in_one_send(settings, monkeypatch):
    use_redis_layer(settings)
    watched, unwatched = str(uuid.uuid4()), str(uuid.uuid4())
    sends = []
    layer = get_channel_layer()
    group_send_many = type(layer).group_send_many

    async def recording_group_send_many(self, by_group):
        sent_to = await group_send_many(self, by_group)
        sends.append(sent_to)
        return sent_to

    monkeypatch.setattr(type(layer), "group_send_many", recording_group_send_many)
    tokens = [
        TokenEvent(key=unwatched, index=0, text="a", completion_tokens=1, max_tokens=4),
        TokenEvent(key=watched, index=0, text="b", completion_tokens=1, max_tokens=4),
        TokenEvent(key=watched, index=1, text="c", completion_tokens=2, max_tokens=4),
    ]

    def publish():
        events.publish_token_events(tokens)
        events.flush()

    received = receive_on_groups([events.job_group(watched)], publish, count=2)

    assert [m["text"] for m in received[events.job_group(watched)]] == ["b", "c"]
    assert sends == [[events.job_group(watched)]]


@needs_redis
@pytest.mark.parametrize("publishing_loop", ["the watch's", "a private one"])
def test_a_local_watch_is_handed_its_events_directly_and_left_out_of_the_layers_send(
    settings, monkeypatch, publishing_loop
):
    use_redis_layer(settings)
    job_id = str(uuid.uuid4())
    group = events.job_group(job_id)

    def publish(*tokens):
        # From a request's thread, as the miners' token relay publishes.
        events.publish_token_events(list(tokens))
        events.flush()

    async def scenario():
        if publishing_loop == "the watch's":
            events.use_server_loop(asyncio.get_running_loop())
        else:
            monkeypatch.setattr(events, "_server_loop", None)
        layer = get_channel_layer()
        watch_channel, socket_channel = await layer.new_channel(), await layer.new_channel()
        for channel in (watch_channel, socket_channel):
            await layer.group_add(group, channel)
        inbox = asyncio.Queue()
        assert events.watch_locally(layer, [group], watch_channel, inbox)
        try:
            await sync_to_async(publish, thread_sensitive=False)(
                TokenEvent(job_id, 0, "a", 1, 4), TokenEvent(job_id, 1, "b", 2, 4)
            )
            direct = [await asyncio.wait_for(inbox.get(), 2) for _ in range(2)]
            # Another member of the group (a ws/jobs socket, a stream in another process) gets them through the layer.
            relayed = [await asyncio.wait_for(layer.receive(socket_channel), 2) for _ in range(2)]
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(layer.receive(watch_channel), 0.3)
        finally:
            events.unwatch_locally([group], watch_channel)
        await sync_to_async(publish, thread_sensitive=False)(TokenEvent(job_id, 2, "c", 3, 4))
        after = await asyncio.wait_for(layer.receive(watch_channel), 2)
        await sync_to_async(events.flush, thread_sensitive=False)()
        return direct, relayed, after, inbox.empty()

    direct, relayed, after, inbox_empty = async_to_sync(scenario)()

    assert [(m["index"], m["text"]) for m in direct] == [(0, "a"), (1, "b")]
    assert [(m["index"], m["text"]) for m in relayed] == [(0, "a"), (1, "b")]
    assert after["text"] == "c" and inbox_empty  # no longer watched locally: through the layer again
    assert events._local_watches == {}


def test_no_local_watch_on_a_layer_that_cannot_leave_a_channel_out():
    async def scenario():
        layer = get_channel_layer()  # in memory
        return events.watch_locally(layer, ["job-x"], await layer.new_channel(), asyncio.Queue())

    assert async_to_sync(scenario)() is False
    assert events._local_watches == {}


@pytest.mark.django_db
def test_each_status_a_job_moves_to_has_a_higher_sequence_than_the_one_before(
    client_api, miner_api, register_miner, submit_job
):
    from jobs.services import job_requeue

    register_miner(miner_api)
    job_id = submit_job(client_api)["job_id"]
    seen = [events.job_status_event(Job.objects.get(pk=job_id))]
    for _ in range(2):  # claimed, re-queued, claimed again
        miner_api.post("/v1/miners/poll", {"max_wait_seconds": 0}, format="json")
        seen.append(events.job_status_event(Job.objects.get(pk=job_id)))
        if len(seen) < 3:
            job_requeue(job_id=job_id)
            seen.append(events.job_status_event(Job.objects.get(pk=job_id)))
    miner_api.post(f"/v1/miners/{job_id}/result", {"result": {"output": "x"}}, format="json")
    seen.append(events.job_status_event(Job.objects.get(pk=job_id)))

    assert [event["status"] for event in seen] == ["queued", "running", "queued", "running", "completed"]
    sequences = [event["sequence"] for event in seen]
    assert sequences == sorted(set(sequences)), sequences


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        (("queued", 0), ("cancelled", 0)),
        (("queued", 0), ("expired", 0)),
        (("running", 0), ("completed", 0)),  # a verified job, which runs as its attempts
        (("running", 3), ("failed", 3)),
        (("queued", 3), ("running", 4)),
    ],
)
def test_an_end_or_a_claim_is_later_than_the_status_it_follows(earlier, later):
    first, then = (events.status_sequence(status=status, attempt=attempt) for status, attempt in (earlier, later))
    assert first < then


def test_an_event_is_older_only_with_a_lower_sequence_than_the_one_seen():
    assert events.is_older({"sequence": 2}, 3)
    assert not events.is_older({"sequence": 3}, 3)
    assert not events.is_older({"sequence": 4}, 3)
    assert not events.is_older({"sequence": 2}, None)  # nothing seen yet


@needs_redis
def test_on_redis_events_of_groups_nobody_watches_never_reach_the_loop(settings, monkeypatch):
    use_redis_layer(settings)
    monkeypatch.setattr(events, "_watched_retry_at", 0.0)
    watched, unwatched = str(uuid.uuid4()), str(uuid.uuid4())
    handed_over = []
    submit = events._OrderedSender.submit

    def recording_submit(self, layer, messages):
        handed_over.append([group for group, _ in messages])
        submit(self, layer, messages)

    monkeypatch.setattr(events._OrderedSender, "submit", recording_submit)

    def publish():
        events.publish_token_events([TokenEvent(unwatched, 0, "a", 1, 4)])  # nobody's: dropped here
        events.publish_token_events([TokenEvent(unwatched, 1, "b", 2, 4), TokenEvent(watched, 0, "c", 1, 4)])
        events.flush()

    received = receive_on_groups([events.job_group(watched)], publish, count=1)

    assert [m["text"] for m in received[events.job_group(watched)]] == ["c"]
    assert handed_over == [[events.job_group(watched)]]


@needs_redis
def test_a_group_watched_in_this_process_keeps_its_events_without_a_member_in_redis(settings, monkeypatch):
    use_redis_layer(settings)
    monkeypatch.setattr(events, "_watched_retry_at", 0.0)
    monkeypatch.setattr(events, "_server_loop", None)
    job_id = str(uuid.uuid4())
    group = events.job_group(job_id)

    async def scenario():
        layer = get_channel_layer()
        inbox = asyncio.Queue()
        assert events.watch_locally(layer, [group], await layer.new_channel(), inbox)
        try:
            await sync_to_async(events.publish_token_events, thread_sensitive=False)([TokenEvent(job_id, 0, "a", 1, 4)])
            return await asyncio.wait_for(inbox.get(), 2)
        finally:
            events._local_watches.clear()

    assert async_to_sync(scenario)()["text"] == "a"


@needs_redis
def test_when_the_layer_cannot_tell_who_watches_every_event_goes_on_and_it_is_asked_again_later(
    settings, monkeypatch, caplog
):
    use_redis_layer(settings)
    monkeypatch.setattr(events, "_watched_retry_at", 0.0)
    layer = get_channel_layer()
    asked, handed_over = [], []

    def failing(groups):
        asked.append(sorted(groups))
        raise redis.ConnectionError("down")

    monkeypatch.setattr(layer, "groups_with_members", failing)
    monkeypatch.setattr(events._OrderedSender, "submit", lambda self, layer, messages: handed_over.append(messages))
    job_id = str(uuid.uuid4())

    with caplog.at_level(logging.WARNING, logger="jobs.events"):
        events.publish_token_events([TokenEvent(job_id, 0, "a", 1, 4)])
        events.publish_token_events([TokenEvent(job_id, 1, "b", 2, 4)])  # within the retry: not asked
        monkeypatch.setattr(events, "_watched_retry_at", 0.0)
        events.publish_token_events([TokenEvent(job_id, 2, "c", 3, 4)])

    assert asked == [[events.job_group(job_id)]] * 2
    assert [[m["text"] for _, m in messages] for messages in handed_over] == [["a"], ["b"], ["c"]]
    assert "watched job groups not known" in caplog.text
