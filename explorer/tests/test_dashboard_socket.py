import asyncio
import copy
import threading
import uuid
from types import SimpleNamespace

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.auth import AuthMiddlewareStack
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from django.conf import settings as django_settings
from django.test import Client

from aitbc_site import settings as site_settings
from aitbc_site.routing import websocket_urlpatterns
from explorer import consumers, selectors
from jobs import feed
from jobs.models import Job
from tests.sockets import Socket

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("in_memory_channel_layer")]

# The production stack less the origin check (asgi.py would also start the embedded workers).
application = AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
needs_redis = pytest.mark.skipif(not django_settings.REDIS_URL, reason="needs Redis (set REDIS_URL); CI always runs it")


@pytest.fixture(autouse=True)
def _fresh_network_stats():
    consumers._dashboard_hub.figures = None


def open_socket(*, headers=None, subprotocols=None):
    return Socket(
        application,
        "/ws/dashboard/",
        headers=[(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()],
        subprotocols=subprotocols,
    )


def session_cookie(user) -> dict:
    browser = Client()
    browser.force_login(user)
    return {"Cookie": f"sessionid={browser.cookies['sessionid'].value}"}


async def next_event(socket, kind: str, timeout: float = 5, **data) -> dict:
    """The next feed event of ``kind`` whose data has ``data`` (others may come in between:
    periodic ``network.stats``, events of the other tests' jobs)."""
    while True:
        event = await socket.receive_json_from(timeout=timeout)
        if event["kind"] == kind and data.items() <= event["data"].items():
            return event


def test_signed_in_user_sees_jobs_submitted_and_finished_without_their_payload(
    client_api, miner_api, register_miner, submit_job
):
    register_miner(miner_api)
    cookie = session_cookie(client_api.user)

    async def scenario():
        socket = open_socket(headers=cookie)
        assert (await socket.connect())[0]
        assert (await socket.receive_json_from())["kind"] == feed.NETWORK_STATS
        job_id = (await sync_to_async(submit_job)(client_api, prompt="my secret prompt"))["job_id"]
        submitted = await next_event(socket, feed.JOB_SUBMITTED, job_id=job_id)
        await sync_to_async(miner_api.post)("/v1/miners/poll", {"max_wait_seconds": 0}, format="json")
        result = await sync_to_async(miner_api.post)(
            f"/v1/miners/{job_id}/result", {"result": {"output": "secret answer"}}, format="json"
        )
        assert result.status_code == 200, result.content
        finished = await next_event(socket, feed.JOB_FINISHED, job_id=job_id)
        await socket.disconnect()
        return job_id, submitted, finished

    job_id, submitted, finished = async_to_sync(scenario)()

    assert submitted == {
        "type": "dashboard.event",
        "kind": "job.submitted",
        "data": {"job_id": job_id, "model": "llama3.2", "status": "queued"},
    }
    assert finished == {
        "type": "dashboard.event",
        "kind": "job.finished",
        "data": {"job_id": job_id, "model": "llama3.2", "status": "completed"},
    }


def test_a_miner_registering_and_deregistering_is_announced_with_its_models(client_api, miner_api, register_miner):
    cookie = session_cookie(client_api.user)

    async def scenario():
        socket = open_socket(headers=cookie)
        assert (await socket.connect())[0]
        assert (await socket.receive_json_from())["kind"] == feed.NETWORK_STATS
        await sync_to_async(register_miner)(miner_api, models=["llama3.2", "codellama"])
        online = await next_event(socket, feed.MINER_ONLINE, miner_id="miner-1")
        await sync_to_async(miner_api.delete)("/v1/miners/miner-1")
        offline = await next_event(socket, feed.MINER_OFFLINE, miner_id="miner-1")
        await socket.disconnect()
        return online, offline

    online, offline = async_to_sync(scenario)()
    assert online["data"] == offline["data"] == {"miner_id": "miner-1", "models": ["codellama", "llama3.2"]}


def test_a_users_socket_follows_each_status_of_its_own_jobs_and_no_one_elses(
    client_api, other_client_api, miner_api, register_miner, submit_job
):
    register_miner(miner_api)

    async def scenario():
        socket = open_socket(headers={"X-Api-Key": client_api.raw_key})
        assert (await socket.connect())[0]
        assert (await socket.receive_json_from())["kind"] == feed.NETWORK_STATS
        mine = (await sync_to_async(submit_job)(client_api))["job_id"]
        seen = [await next_event(socket, feed.JOB_UPDATED, job_id=mine, status="queued")]
        await sync_to_async(miner_api.post)("/v1/miners/poll", {"max_wait_seconds": 0}, format="json")
        seen.append(await next_event(socket, feed.JOB_UPDATED, job_id=mine, status="running"))
        await sync_to_async(miner_api.post)(f"/v1/miners/{mine}/result", {"result": {"output": "x"}}, format="json")
        seen.append(await next_event(socket, feed.JOB_UPDATED, job_id=mine, status="completed"))
        others = (await sync_to_async(submit_job)(other_client_api))["job_id"]
        await sync_to_async(other_client_api.post)(f"/v1/jobs/{others}/cancel")
        # Everything up to the network's news of the cancellation (it may come late), then what
        # came with it.
        rest = []
        while not rest or (rest[-1]["kind"], rest[-1]["data"].get("job_id")) != (feed.JOB_FINISHED, others):
            rest.append(await socket.receive_json_from(timeout=5))
        while not await socket.receive_nothing(timeout=0.3):
            rest.append(await socket.receive_json_from())
        await socket.disconnect()
        return others, mine, seen, rest

    others, mine, seen, rest = async_to_sync(scenario)()

    assert [event["data"] for event in seen] == [
        {"job_id": mine, "model": "llama3.2", "status": status, "sequence": sequence}
        for status, sequence in (("queued", 2), ("running", 3), ("completed", 5))
    ]
    assert not [event for event in rest if event["kind"] == feed.JOB_UPDATED]
    assert {"job_id": others, "model": "llama3.2", "status": "cancelled"} in [event["data"] for event in rest]


def test_a_users_socket_never_sends_a_jobs_status_older_than_one_it_sent(client_api):
    def updated(job_id, status, sequence):
        return feed.dashboard_event(
            feed.JOB_UPDATED, {"job_id": job_id, "model": "m", "status": status, "sequence": sequence}
        )

    group = feed.user_group(client_api.user.pk)

    async def scenario():
        socket = open_socket(headers={"X-Api-Key": client_api.raw_key})
        assert (await socket.connect())[0]
        assert (await socket.receive_json_from())["kind"] == feed.NETWORK_STATS
        layer = get_channel_layer()
        # As two processes would send them: the claim's news first, the submission's after it.
        await layer.group_send(group, updated("a", "running", 3))
        await layer.group_send(group, updated("a", "queued", 2))
        await layer.group_send(
            group, {"type": feed.DASHBOARD_BATCH, "events": [updated("a", "queued", 2), updated("b", "queued", 2)]}
        )
        await layer.group_send(group, updated("a", "completed", 5))
        received = []
        while not await socket.receive_nothing(timeout=0.3):
            received.append(await socket.receive_json_from())
        await socket.disconnect()
        return received

    received = async_to_sync(scenario)()

    updates = [
        (event["data"]["job_id"], event["data"]["status"]) for event in received if event["kind"] == feed.JOB_UPDATED
    ]
    assert updates == [("a", "running"), ("b", "queued"), ("a", "completed")]


def test_a_flush_keeps_each_users_latest_status_per_job_and_every_network_event():
    def updated(job_id, status):
        return feed.dashboard_event(feed.JOB_UPDATED, {"job_id": job_id, "model": "m", "status": status})

    submitted = feed.dashboard_event(feed.JOB_SUBMITTED, {"job_id": "a", "model": "m", "status": "queued"})
    finished = feed.dashboard_event(feed.JOB_FINISHED, {"job_id": "a", "model": "m", "status": "completed"})
    items = [
        (feed.DASHBOARD_GROUP, submitted),
        ("user-1", updated("a", "queued")),
        ("user-1", updated("b", "queued")),
        ("user-2", updated("c", "queued")),
        ("user-1", updated("a", "running")),
        ("user-1", updated("a", "completed")),
        (feed.DASHBOARD_GROUP, finished),
        (feed.DASHBOARD_GROUP, finished),
    ]

    batches = feed._by_group(items)

    assert batches == {
        feed.DASHBOARD_GROUP: [submitted, finished, finished],
        "user-1": [updated("b", "queued"), updated("a", "completed")],
        "user-2": [updated("c", "queued")],
    }


def test_a_flush_keeps_the_latest_status_of_a_job_published_out_of_order():
    def updated(status, sequence):
        return feed.dashboard_event(
            feed.JOB_UPDATED, {"job_id": "a", "model": "m", "status": status, "sequence": sequence}
        )

    items = [("user-1", updated("running", 3)), ("user-1", updated("queued", 2))]

    assert feed._by_group(items) == {"user-1": [updated("running", 3)]}


def test_a_flush_scheduled_on_another_loop_is_sent_on_the_servers(client_api):
    # Events published before any socket connected are flushed from a private loop; a socket
    # connecting meanwhile makes its loop the server's, and the flush must go out there.
    private = asyncio.new_event_loop()
    threading.Thread(target=private.run_forever, daemon=True).start()
    block = feed.dashboard_event(feed.BLOCK_SEALED, {"height": 7, "hash": "ab" * 32, "tx_count": 1})

    async def scenario():
        socket = open_socket(headers={"X-Api-Key": client_api.raw_key})
        assert (await socket.connect())[0]
        await socket.receive_json_from()
        with feed._pending_lock:
            feed._pending.append((feed.DASHBOARD_GROUP, block))
        private.call_soon_threadsafe(feed._start_flush, private)
        received = await next_event(socket, feed.BLOCK_SEALED, timeout=2)
        await socket.disconnect()
        return received

    try:
        assert async_to_sync(scenario)() == block
    finally:
        private.call_soon_threadsafe(private.stop)


def test_snapshot_on_connect_counts_the_queue_and_the_miners_online(client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api, models=("llama3.2", "mistral"))
    submit_job(client_api)
    submit_job(client_api)
    submit_job(client_api, model="mistral")

    async def scenario():
        socket = open_socket(headers={"X-Api-Key": client_api.raw_key})
        assert (await socket.connect())[0]
        snapshot = await socket.receive_json_from()
        await socket.disconnect()
        return snapshot

    snapshot = async_to_sync(scenario)()

    assert (snapshot["type"], snapshot["kind"]) == ("dashboard.event", "network.stats")
    assert snapshot["data"] == {
        "jobs_per_minute": 0.0,
        "queue_depth": {"llama3.2": 2, "mistral": 1},
        "median_wait_seconds": None,
        "median_run_seconds": None,
        "tokens_per_second": 0.0,
        "miners_online": 1,
    }


def test_network_stats_cover_jobs_completed_in_the_window(client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api, max_concurrent_jobs=2)
    for _ in range(2):
        job_id = submit_job(client_api)["job_id"]
        miner_api.post("/v1/miners/poll", {"max_wait_seconds": 0}, format="json")
        result = {"output": "hi", "usage": {"prompt_tokens": 3, "completion_tokens": 150}}
        assert miner_api.post(f"/v1/miners/{job_id}/result", {"result": result}, format="json").status_code == 200

    stats = selectors.live_network_figures()

    assert stats["jobs_per_minute"] == 0.4  # 2 jobs over 5 minutes
    assert stats["tokens_per_second"] == 1.0  # 300 tokens over 300 s
    assert stats["median_wait_seconds"] >= 0
    assert stats["median_run_seconds"] >= 0
    assert stats["queue_depth"] == {}


def test_key_in_subprotocol_is_accepted_and_echoed(client_api):
    offered = f"aitbc.key.{client_api.raw_key}"

    async def scenario():
        socket = open_socket(subprotocols=[offered])
        connected, subprotocol = await socket.connect()
        snapshot = await socket.receive_json_from()
        await socket.disconnect()
        return connected, subprotocol, snapshot

    connected, subprotocol, snapshot = async_to_sync(scenario)()

    assert (connected, subprotocol, snapshot["kind"]) == (True, offered, "network.stats")


@pytest.mark.parametrize("headers", [{}, {"X-Api-Key": "aitbc_not-a-key"}])
def test_anonymous_or_invalid_key_is_closed_4401(headers):
    async def scenario():
        socket = open_socket(headers=headers)
        await socket.connect()
        closed = await socket.receive_output()
        await socket.disconnect()
        return closed

    assert async_to_sync(scenario)() == {"type": "websocket.close", "code": 4401}


def test_refused_socket_gets_no_feed_events(client_api, submit_job):
    async def scenario():
        socket = open_socket()
        await socket.connect()
        await socket.receive_output()
        await sync_to_async(submit_job)(client_api)
        return await socket.receive_nothing(timeout=0.3)

    assert async_to_sync(scenario)()


def test_blocks_published_together_arrive_in_order(client_api):
    async def scenario():
        socket = open_socket(headers={"X-Api-Key": client_api.raw_key})
        assert (await socket.connect())[0]
        await socket.receive_json_from()
        blocks = [SimpleNamespace(height=height, hash="ab" * 32, tx_count=1) for height in range(5)]
        await sync_to_async(feed.publish_blocks_sealed)(blocks)
        received = [await next_event(socket, feed.BLOCK_SEALED) for _ in blocks]
        await socket.disconnect()
        return received

    assert [event["data"]["height"] for event in async_to_sync(scenario)()] == [0, 1, 2, 3, 4]


@needs_redis
def test_150_sockets_at_once_on_redis_all_receive_a_published_event(settings, client_api):
    # The configured layer (its connection pool included), on a namespace of this test's own.
    layers = copy.deepcopy(site_settings.CHANNEL_LAYERS)
    layers["default"]["CONFIG"]["prefix"] = f"aitbc-test-{uuid.uuid4().hex}"
    settings.CHANNEL_LAYERS = layers
    count = 150

    async def scenario():
        sockets = [open_socket(headers={"X-Api-Key": client_api.raw_key}) for _ in range(count)]
        connected = await asyncio.gather(*(socket.connect(timeout=30) for socket in sockets))
        await asyncio.gather(*(socket.receive_json_from(timeout=30) for socket in sockets))
        event = feed.dashboard_event(feed.BLOCK_SEALED, {"height": 7, "hash": "ab" * 32, "tx_count": 3})
        await get_channel_layer().group_send(feed.DASHBOARD_GROUP, event)
        received = await asyncio.gather(
            *(next_event(socket, feed.BLOCK_SEALED, timeout=30) for socket in sockets), return_exceptions=True
        )
        await asyncio.gather(*(socket.disconnect() for socket in sockets))
        return connected, received

    connected, received = async_to_sync(scenario)()

    assert all(ok for ok, _ in connected)
    assert [event["data"]["height"] if isinstance(event, dict) else event for event in received] == [7] * count


@needs_redis
def test_configured_redis_layer_takes_150_concurrent_group_joins(settings):
    # Every ws/jobs socket joins a group as it connects: redis-py's default pool of 100
    # connections made the 101st concurrent join fail.
    layers = copy.deepcopy(site_settings.CHANNEL_LAYERS)
    layers["default"]["CONFIG"]["prefix"] = f"aitbc-test-{uuid.uuid4().hex}"
    settings.CHANNEL_LAYERS = layers

    async def scenario():
        layer = get_channel_layer()
        channels = [await layer.new_channel() for _ in range(150)]
        joined = await asyncio.gather(
            *(layer.group_add("crowd", channel) for channel in channels), return_exceptions=True
        )
        await layer.group_send("crowd", {"type": "hello"})
        received = await asyncio.gather(*(layer.receive(channel) for channel in channels))
        await layer.flush()
        return joined, received

    joined, received = async_to_sync(scenario)()

    assert [error for error in joined if error is not None] == []
    assert received == [{"type": "hello"}] * 150


@needs_redis
def test_on_redis_feed_events_go_only_to_groups_someone_watches(settings, monkeypatch):
    layers = copy.deepcopy(site_settings.CHANNEL_LAYERS)
    layers["default"]["CONFIG"]["prefix"] = f"aitbc-test-{uuid.uuid4().hex}"
    settings.CHANNEL_LAYERS = layers
    layer = get_channel_layer()
    sent_to = []
    group_send_many = type(layer).group_send_many

    async def recording_group_send_many(self, by_group):
        watched = await group_send_many(self, by_group)
        sent_to.extend(watched)
        return watched

    monkeypatch.setattr(type(layer), "group_send_many", recording_group_send_many)
    event = feed.job_event(feed.JOB_UPDATED, SimpleNamespace(pk=uuid.uuid4(), model="m", status="queued", attempt=0))
    watched, unwatched = feed.user_group(1), feed.user_group(2)

    async def scenario():
        channel = await layer.new_channel()
        await layer.group_add(watched, channel)
        await feed._send({watched: [event], unwatched: [event]})
        received = await asyncio.wait_for(layer.receive(channel), 2)
        await layer.group_discard(watched, channel)
        return received

    assert async_to_sync(scenario)() == event
    assert sent_to == [watched]


def test_a_connect_that_fails_leaves_no_group_membership(client_api, monkeypatch):
    def unavailable(**kwargs):
        raise RuntimeError("database unavailable")

    monkeypatch.setattr(selectors, "live_network_figures", unavailable)

    async def scenario():
        socket = open_socket(headers={"X-Api-Key": client_api.raw_key})
        assert (await socket.connect())[0]  # accepted; the snapshot fails after
        with pytest.raises(RuntimeError):
            await socket.receive_output()

    async_to_sync(scenario)()

    assert not get_channel_layer().groups.get(feed.user_group(client_api.user.pk))


def test_a_verified_jobs_attempts_are_not_shown_to_its_client_as_jobs(client_api, monkeypatch):
    posted = []
    monkeypatch.setattr(feed, "_post", posted.extend)
    job_id = client_api.post(
        "/v1/jobs", {"payload": {"prompt": "hi", "model": "llama3.2"}, "verification": {"redundancy": 2}}, format="json"
    ).json()["job_id"]
    parent = Job.objects.get(pk=job_id)
    attempts = list(Job.objects.filter(parent=parent))
    posted.clear()

    feed.publish_jobs_changed([parent, *attempts])

    mine = [event["data"]["job_id"] for group, event in posted if group == feed.user_group(client_api.user.pk)]
    assert mine == [job_id]
