import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from django.test import Client

from aitbc_site.routing import websocket_urlpatterns
from jobs.models import Job, JobStatus
from miners.models import Miner
from tests.sockets import Socket

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("in_memory_channel_layer")]

application = AuthMiddlewareStack(URLRouter(websocket_urlpatterns))


def open_socket(*, path="/ws/miners/", headers=None, subprotocols=None):
    return Socket(
        application,
        path,
        headers=[(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()],
        subprotocols=subprotocols,
    )


def close_code_for(**socket_options) -> int:
    async def scenario():
        socket = open_socket(**socket_options)
        await socket.connect()
        closed = await socket.receive_output()
        await socket.disconnect()
        return closed["code"]

    return async_to_sync(scenario)()


def test_job_submitted_after_connecting_is_pushed_with_a_real_lease(client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api)

    async def scenario():
        socket = open_socket(headers={"X-Api-Key": miner_api.raw_key, "X-Miner-ID": "miner-1"})
        assert (await socket.connect())[0]
        nothing_yet = await socket.receive_nothing(timeout=0.2)
        job_id = (await sync_to_async(submit_job)(client_api, prompt="push me"))["job_id"]
        assigned = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return nothing_yet, job_id, assigned

    nothing_yet, job_id, assigned = async_to_sync(scenario)()

    assert nothing_yet
    assert assigned["type"] == "job.assigned"
    job = Job.objects.select_related("miner").get(pk=job_id)
    assert (job.status, job.miner.miner_id, job.attempt) == (JobStatus.RUNNING, "miner-1", 1)
    assert assigned["job"] == {
        "job_id": job_id,
        "type": "inference",
        "model": "llama3.2",
        "payload": {"type": "inference", "prompt": "push me", "model": "llama3.2"},
        "constraints": {},
        "attempt": 1,
        "lease_token": job.lease_token,
        "lease_expires_at": assigned["job"]["lease_expires_at"],
    }
    assert assigned["job"]["lease_expires_at"]


def test_a_miner_below_full_reputation_is_pushed_a_job_once_its_head_start_has_passed(
    client_api, miner_api, register_miner, submit_job, settings
):
    # Woken by the job before its head start passed, the socket claimed nothing and waited for the
    # next wake-up or its 15 s recheck.
    settings.MATCHING_REPUTATION_HEADSTART_SECONDS = 0.6
    register_miner(miner_api)
    Miner.objects.filter(miner_id="miner-1").update(reputation_score=0.5)  # a head start of 0.3 s

    async def scenario():
        socket = open_socket(headers={"X-Api-Key": miner_api.raw_key, "X-Miner-ID": "miner-1"})
        assert (await socket.connect())[0]
        assert await socket.receive_nothing(timeout=0.2)
        job_id = (await sync_to_async(submit_job)(client_api, prompt="push me"))["job_id"]
        assigned = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return job_id, assigned

    job_id, assigned = async_to_sync(scenario)()

    assert assigned["job"]["job_id"] == job_id


def test_a_miner_below_full_reputation_is_pushed_a_job_queued_before_it_connected_once_its_head_start_has_passed(
    client_api, miner_api, register_miner, submit_job, settings
):
    # The look at connect found the job inside the head start, and nothing woke the socket again
    # before its 15 s recheck.
    settings.MATCHING_REPUTATION_HEADSTART_SECONDS = 0.6
    register_miner(miner_api)
    Miner.objects.filter(miner_id="miner-1").update(reputation_score=0.5)  # a head start of 0.3 s
    job_id = submit_job(client_api, prompt="push me")["job_id"]

    async def scenario():
        socket = open_socket(headers={"X-Api-Key": miner_api.raw_key, "X-Miner-ID": "miner-1"})
        assert (await socket.connect())[0]
        assigned = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return assigned

    assert async_to_sync(scenario)()["job"]["job_id"] == job_id


def test_queued_jobs_are_pushed_on_connect_up_to_the_miners_concurrency(
    client_api, miner_api, register_miner, submit_job
):
    register_miner(miner_api, max_concurrent_jobs=2)
    job_ids = [submit_job(client_api)["job_id"] for _ in range(3)]

    async def scenario():
        socket = open_socket(path="/ws/miners/?miner_id=miner-1", subprotocols=[f"aitbc.key.{miner_api.raw_key}"])
        assert (await socket.connect())[0]
        pushed = [await socket.receive_json_from(timeout=5) for _ in range(2)]
        nothing_more = await socket.receive_nothing(timeout=0.3)
        await socket.disconnect()
        return pushed, nothing_more

    pushed, nothing_more = async_to_sync(scenario)()

    assert [message["job"]["job_id"] for message in pushed] == job_ids[:2]
    assert nothing_more
    assert Job.objects.filter(status=JobStatus.RUNNING, miner__miner_id="miner-1").count() == 2
    assert Job.objects.get(pk=job_ids[2]).status == JobStatus.QUEUED


def test_ready_claims_again_once_a_slot_is_free(client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api)
    first, second = (submit_job(client_api)["job_id"] for _ in range(2))

    async def scenario():
        socket = open_socket(headers={"X-Api-Key": miner_api.raw_key, "X-Miner-ID": "miner-1"})
        assert (await socket.connect())[0]
        pushed_first = await socket.receive_json_from(timeout=5)
        result = await sync_to_async(miner_api.post)(
            f"/v1/miners/{first}/result", {"result": {"output": "ok"}}, format="json"
        )
        assert result.status_code == 200, result.content
        await socket.send_json_to({"type": "ready"})
        pushed_second = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return pushed_first, pushed_second

    pushed_first, pushed_second = async_to_sync(scenario)()

    assert (pushed_first["job"]["job_id"], pushed_second["job"]["job_id"]) == (first, second)


def test_client_key_is_closed_4403(client_api):
    assert close_code_for(headers={"X-Api-Key": client_api.raw_key}) == 4403


@pytest.mark.parametrize("headers", [{}, {"X-Api-Key": "aitbc_not-a-key", "X-Miner-ID": "miner-1"}])
def test_missing_or_invalid_key_is_closed_4401(headers):
    assert close_code_for(headers=headers) == 4401


def test_browser_session_without_a_miner_key_is_closed_4403(client_api):
    browser = Client()
    browser.force_login(client_api.user)
    session = f"sessionid={browser.cookies['sessionid'].value}"

    assert close_code_for(headers={"Cookie": session}) == 4403


def test_a_message_nested_too_deeply_is_ignored_and_the_socket_still_answers(miner_api, register_miner):
    register_miner(miner_api)

    async def scenario():
        socket = open_socket(headers={"X-Api-Key": miner_api.raw_key, "X-Miner-ID": "miner-1"})
        connected, _ = await socket.connect()
        await socket.send_to(text_data="[" * 5000 + "]" * 5000)
        await socket.send_json_to({"type": "ping"})
        answer = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return connected, answer

    connected, answer = async_to_sync(scenario)()

    assert connected
    assert answer == {"type": "pong"}


def test_unregistered_miner_is_closed_4404(miner_api):
    assert close_code_for(headers={"X-Api-Key": miner_api.raw_key, "X-Miner-ID": "nobody"}) == 4404
