import uuid
from dataclasses import dataclass

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from django.conf import settings as django_settings
from django.test import Client
from django.utils import timezone

from accounts.services import user_get_or_create
from aitbc_site.routing import websocket_urlpatterns
from jobs import events
from jobs.events import publish_job_status, publish_token_events
from jobs.models import Job, JobStatus
from tests.sockets import Socket

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("in_memory_channel_layer")]

# The production stack less the origin check (asgi.py would also start the embedded workers).
application = AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
needs_redis = pytest.mark.skipif(not django_settings.REDIS_URL, reason="needs Redis (set REDIS_URL); CI always runs it")


@dataclass(frozen=True)
class TokenEvent:
    key: str
    index: int
    text: str
    completion_tokens: int
    max_tokens: int


@pytest.fixture(params=["memory", pytest.param("redis", marks=needs_redis)])
def layer_kind(request, settings):
    if request.param == "redis":
        settings.CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "core.channel_layers.RedisChannelLayer",
                "CONFIG": {"hosts": [settings.REDIS_URL], "prefix": f"aitbc-test-{uuid.uuid4().hex}"},
            }
        }
    return request.param


@pytest.fixture
def job_id(client_api, submit_job):
    return submit_job(client_api)["job_id"]


def open_socket(job_id, *, headers=None, subprotocols=None):
    return Socket(
        application,
        f"/ws/jobs/{job_id}/",
        # ASGI servers lower-case header names.
        headers=[(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()],
        subprotocols=subprotocols,
    )


def close_code_for(job_id, **socket_options) -> int:
    async def scenario():
        socket = open_socket(job_id, **socket_options)
        await socket.connect()
        closed = await socket.receive_output()
        assert closed["type"] == "websocket.close"
        await socket.disconnect()
        return closed["code"]

    return async_to_sync(scenario)()


def snapshot_for(job_id, **socket_options) -> tuple[str | None, dict]:
    """Connect, and return the subprotocol the server chose and the first message."""

    async def scenario():
        socket = open_socket(job_id, **socket_options)
        connected, subprotocol = await socket.connect()
        assert connected
        snapshot = await socket.receive_json_from()
        await socket.disconnect()
        return subprotocol, snapshot

    return async_to_sync(scenario)()


def complete(job_id, output: str) -> Job:
    Job.objects.filter(pk=job_id).update(
        status=JobStatus.COMPLETED,
        result={"output": output},
        progress=100,
        completed_at=timezone.now(),
        lease_expires_at=None,
    )
    return Job.objects.select_related("miner").get(pk=job_id)


def test_client_gets_the_snapshot_then_tokens_in_order_then_the_final_status(
    layer_kind, client_api, miner_api, register_miner, submit_job
):
    job_id = submit_job(client_api)["job_id"]
    register_miner(miner_api)
    assert miner_api.post("/v1/miners/poll", {"max_wait_seconds": 0}, format="json").json()["job_id"] == job_id
    events.flush()  # the claim's status: it comes before the snapshot, not between it and the tokens
    tokens = [TokenEvent(job_id, i, text, i + 1, 4) for i, text in enumerate(["Hel", "lo", "!"])]

    async def scenario():
        socket = open_socket(job_id, headers={"X-Api-Key": client_api.raw_key})
        assert (await socket.connect())[0]
        snapshot = await socket.receive_json_from()
        # From a worker thread, as the inference worker publishes.
        await sync_to_async(publish_token_events, thread_sensitive=False)(tokens)
        streamed = [await socket.receive_json_from() for _ in tokens]
        await sync_to_async(lambda: publish_job_status(complete(job_id, "Hello!")))()
        final = await socket.receive_json_from()
        closed = await socket.receive_output()
        await socket.disconnect()
        return snapshot, streamed, final, closed

    snapshot, streamed, final, closed = async_to_sync(scenario)()

    assert snapshot["type"] == "job.status"
    assert (snapshot["job_id"], snapshot["status"], snapshot["state"]) == (job_id, "running", "RUNNING")
    assert snapshot["miner_id"] == "miner-1"
    assert streamed == [
        {"type": "job.token", "job_id": job_id, "index": 0, "text": "Hel", "progress": 25},
        {"type": "job.token", "job_id": job_id, "index": 1, "text": "lo", "progress": 50},
        {"type": "job.token", "job_id": job_id, "index": 2, "text": "!", "progress": 75},
    ]
    assert (final["type"], final["status"], final["state"]) == ("job.status", "completed", "COMPLETED")
    assert (final["result"], final["progress"]) == ({"output": "Hello!"}, 100)
    assert final["completed_at"]
    assert closed == {"type": "websocket.close", "code": 1000}


def test_a_status_sent_before_a_newer_one_already_sent_is_not_sent(client_api, miner_api, register_miner, submit_job):
    job_id = submit_job(client_api)["job_id"]
    queued = Job.objects.get(pk=job_id)  # as the submitting process published it
    register_miner(miner_api)
    miner_api.post("/v1/miners/poll", {"max_wait_seconds": 0}, format="json")
    events.flush()  # the claim's own status event is not the late one this test sends

    async def scenario():
        socket = open_socket(job_id, headers={"X-Api-Key": client_api.raw_key})
        assert (await socket.connect())[0]
        snapshot = await socket.receive_json_from()
        # The submission's event, late: it left its process after the claim's.
        await sync_to_async(publish_job_status)(queued)
        await sync_to_async(lambda: publish_job_status(complete(job_id, "Hello!")))()
        following = await socket.receive_json_from()
        await socket.disconnect()
        return snapshot, following

    snapshot, following = async_to_sync(scenario)()

    assert (snapshot["status"], snapshot["sequence"]) == ("running", 3)
    assert (following["status"], following["sequence"]) == ("completed", 5)


def test_snapshot_is_the_rest_job_view(client_api, job_id):
    view = client_api.get(f"/v1/jobs/{job_id}").json()

    _, snapshot = snapshot_for(job_id, headers={"X-Api-Key": client_api.raw_key})

    assert snapshot["job_type"] == view.pop("type")
    del view["payload"]
    assert {k: v for k, v in snapshot.items() if k in view} == view
    assert snapshot["queue_position"] == 1


def test_bearer_header_subscribes(client_api, job_id):
    subprotocol, snapshot = snapshot_for(job_id, headers={"Authorization": f"Bearer {client_api.raw_key}"})

    assert (snapshot["job_id"], snapshot["status"]) == (job_id, "queued")
    assert subprotocol is None


@pytest.mark.parametrize("spelling", ["aitbc.key.{key}", "{key}"])
def test_key_in_subprotocol_subscribes_and_is_echoed(client_api, job_id, spelling):
    offered = spelling.format(key=client_api.raw_key)

    subprotocol, snapshot = snapshot_for(job_id, subprotocols=[offered])

    assert snapshot["job_id"] == job_id
    assert subprotocol == offered


def test_key_subprotocol_is_found_among_others(client_api, job_id):
    offered = f"aitbc.key.{client_api.raw_key}"

    subprotocol, snapshot = snapshot_for(job_id, subprotocols=["aitbc.v1", offered])

    assert (subprotocol, snapshot["job_id"]) == (offered, job_id)


def test_signed_in_owner_subscribes_with_the_session(client_api, job_id):
    browser = Client()
    browser.force_login(client_api.user)

    _, snapshot = snapshot_for(job_id, headers={"Cookie": f"sessionid={browser.cookies['sessionid'].value}"})

    assert snapshot["job_id"] == job_id


def test_admin_key_follows_any_clients_job(make_api, job_id):
    admin = make_api("admin", "operator")

    _, snapshot = snapshot_for(job_id, headers={"X-Api-Key": admin.raw_key})

    assert snapshot["job_id"] == job_id


def test_staff_session_follows_any_clients_job(job_id):
    staff = user_get_or_create(username="staff")
    staff.is_staff = True
    staff.save(update_fields=["is_staff"])
    browser = Client()
    browser.force_login(staff)

    _, snapshot = snapshot_for(job_id, headers={"Cookie": f"sessionid={browser.cookies['sessionid'].value}"})

    assert snapshot["job_id"] == job_id


def test_another_clients_job_is_closed_4404(other_client_api, job_id):
    assert close_code_for(job_id, headers={"X-Api-Key": other_client_api.raw_key}) == 4404


def test_another_clients_job_gets_no_events(client_api, other_client_api, job_id):
    async def scenario():
        socket = open_socket(job_id, headers={"X-Api-Key": other_client_api.raw_key})
        await socket.connect()
        closed = await socket.receive_output()
        await sync_to_async(publish_token_events, thread_sensitive=False)([TokenEvent(job_id, 0, "secret", 1, 4)])
        return closed, await socket.receive_nothing()

    closed, nothing_more = async_to_sync(scenario)()

    assert closed["code"] == 4404
    assert nothing_more


def test_unknown_job_is_closed_4404(make_api):
    admin = make_api("admin", "operator")

    assert close_code_for(uuid.uuid4(), headers={"X-Api-Key": admin.raw_key}) == 4404


def test_no_credentials_is_closed_4401(job_id):
    assert close_code_for(job_id) == 4401


@pytest.mark.parametrize(
    "socket_options",
    [
        {"headers": {"X-Api-Key": "aitbc_not-a-key"}},
        {"headers": {"Authorization": "Bearer aitbc_not-a-key"}},
        {"subprotocols": ["aitbc.key.aitbc_not-a-key"]},
    ],
)
def test_invalid_key_is_closed_4401(job_id, socket_options):
    assert close_code_for(job_id, **socket_options) == 4401


def test_invalid_key_in_subprotocol_is_echoed_before_the_close(job_id):
    async def scenario():
        socket = open_socket(job_id, subprotocols=["aitbc.key.aitbc_not-a-key"])
        _, subprotocol = await socket.connect()
        await socket.receive_output()
        return subprotocol

    # Browsers fail a handshake that does not echo an offered subprotocol, and never see the code.
    assert async_to_sync(scenario)() == "aitbc.key.aitbc_not-a-key"


def test_invalid_key_is_refused_even_with_a_signed_in_session(client_api, job_id):
    browser = Client()
    browser.force_login(client_api.user)
    session = f"sessionid={browser.cookies['sessionid'].value}"

    assert close_code_for(job_id, headers={"Cookie": session, "X-Api-Key": "aitbc_not-a-key"}) == 4401


def test_revoked_key_is_closed_4401(client_api, job_id):
    from accounts.services import api_key_revoke

    api_key_revoke(api_key=client_api.api_key)

    assert close_code_for(job_id, headers={"X-Api-Key": client_api.raw_key}) == 4401


def test_miner_key_is_closed_4403(miner_api, job_id):
    assert close_code_for(job_id, headers={"X-Api-Key": miner_api.raw_key}) == 4403


def test_terminal_job_sends_its_snapshot_and_closes_1000(client_api, job_id):
    complete(job_id, "done")

    async def scenario():
        socket = open_socket(job_id, headers={"X-Api-Key": client_api.raw_key})
        assert (await socket.connect())[0]
        snapshot = await socket.receive_json_from()
        closed = await socket.receive_output()
        await socket.disconnect()
        return snapshot, closed

    snapshot, closed = async_to_sync(scenario)()

    assert (snapshot["status"], snapshot["result"]) == ("completed", {"output": "done"})
    assert closed == {"type": "websocket.close", "code": 1000}


def test_ping_is_answered_with_pong_and_other_messages_are_ignored(client_api, job_id):
    async def scenario():
        socket = open_socket(job_id, headers={"X-Api-Key": client_api.raw_key})
        assert (await socket.connect())[0]
        await socket.receive_json_from()
        await socket.send_to(text_data="not json")
        await socket.send_to(bytes_data=b"\x00")
        await socket.send_json_to({"type": "subscribe", "job_id": "other"})
        await socket.send_json_to({"type": "ping"})
        reply = await socket.receive_json_from()
        nothing_more = await socket.receive_nothing()
        await socket.disconnect()
        return reply, nothing_more

    reply, nothing_more = async_to_sync(scenario)()

    assert reply == {"type": "pong"}
    assert nothing_more


def connects_through_the_production_stack(job_id, headers) -> bool:
    from aitbc_site.routing import websocket_application

    async def scenario():
        socket = Socket(
            websocket_application(),
            f"/ws/jobs/{job_id}/",
            headers=[(name.lower().encode(), value.encode()) for name, value in headers.items()],
        )
        connected, _ = await socket.connect()
        await socket.disconnect()
        return connected

    return async_to_sync(scenario)()


def test_a_program_without_an_origin_connects_with_its_key(client_api, job_id):
    assert connects_through_the_production_stack(job_id, {"X-Api-Key": client_api.raw_key})


def test_a_browser_page_from_another_site_is_refused(client_api, job_id, settings):
    settings.ALLOWED_HOSTS = ["coordinator.example.com"]
    headers = {"X-Api-Key": client_api.raw_key, "Origin": "https://evil.example.net"}
    assert not connects_through_the_production_stack(job_id, headers)
    headers["Origin"] = "https://coordinator.example.com"
    assert connects_through_the_production_stack(job_id, headers)


def test_a_verified_jobs_attempts_are_followed_by_staff_not_by_the_client(client_api, make_api):
    job_id = client_api.post(
        "/v1/jobs", {"payload": {"prompt": "hi", "model": "llama3.2"}, "verification": {"redundancy": 2}}, format="json"
    ).json()["job_id"]
    attempt_id = str(Job.objects.filter(parent_id=job_id).values_list("pk", flat=True).first())
    admin = make_api("admin", "operator")

    assert close_code_for(attempt_id, headers={"X-Api-Key": client_api.raw_key}) == 4404
    assert snapshot_for(job_id, headers={"X-Api-Key": client_api.raw_key})[1]["job_id"] == job_id
    assert snapshot_for(attempt_id, headers={"X-Api-Key": admin.raw_key})[1]["job_id"] == attempt_id
