"""``ws/miners/``: jobs submitted in the socket's process handed to it at once, and the leases it
holds fencing the text its miner streams without a read of the job."""

import asyncio
import uuid
from types import SimpleNamespace
from unittest import mock

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.db import OperationalError

from jobs import consumers, events, wakeup
from jobs.models import Job, JobStatus
from jobs.services import job_submit
from tests.sockets import events_sent, socket

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("in_memory_channel_layer"),
]


async def miner_socket(miner_api, path: str = "/ws/miners/"):
    """A connected socket of ``miner-1`` to ``path``."""
    miner = socket(path, miner_api.raw_key, **{"X-Miner-ID": "miner-1"})
    assert (await miner.connect())[0]
    return miner


def submit_offered(client, model="llama3.2") -> str:
    """Queue a job as the OpenAI-compatible views do: offered to this process's sockets first."""
    job_id = uuid.uuid4()
    with consumers.jobs_offer_to_sockets(model, [job_id]):
        job_submit(client=client, model=model, payload={"type": "inference", "prompt": "hi"}, job_id=job_id)
    return str(job_id)


async def offered_and_assigned(miner_api, client) -> tuple:
    """A connected ``miner-1`` socket, a job queued as the OpenAI views do, and the job as the
    socket was handed it."""
    miner = await miner_socket(miner_api)
    job_id = await sync_to_async(submit_offered)(client)
    return miner, job_id, (await miner.receive_json_from(timeout=5))["job"]


def held_leases() -> dict:
    """The leases held by this process's one claiming miner socket."""
    (miner_socket,) = consumers._offered_sockets._sockets
    return miner_socket.held


def test_a_job_offered_to_a_socket_of_this_process_is_leased_and_pushed_without_its_announcement(
    client_api, miner_api, register_miner
):
    register_miner(miner_api)

    async def scenario():
        miner = await miner_socket(miner_api)
        assert await miner.receive_nothing(timeout=0.2)
        with mock.patch.object(wakeup.hub, "notify", wraps=wakeup.hub.notify) as notify:
            job_id = await sync_to_async(submit_offered)(client_api.user)
            assigned = await miner.receive_json_from(timeout=5)
            assert await miner.receive_nothing(timeout=0.5)  # its announcement, if any, arrives meanwhile
        await miner.disconnect()
        return job_id, assigned, notify.call_args_list

    job_id, assigned, announced = async_to_sync(scenario)()
    job = Job.objects.select_related("miner").get(pk=job_id)
    assert (job.status, job.miner.miner_id, job.attempt) == (JobStatus.RUNNING, "miner-1", 1)
    assert (assigned["type"], assigned["job"]["job_id"]) == ("job.assigned", job_id)
    assert assigned["job"]["lease_token"] == job.lease_token
    assert announced == []  # no waiter was woken to race the offer


def test_a_job_the_sockets_miner_has_no_room_for_stays_queued_for_the_next_claim(client_api, miner_api, register_miner):
    register_miner(miner_api)  # one job at a time

    async def scenario():
        miner = await miner_socket(miner_api)
        first = await sync_to_async(submit_offered)(client_api.user)
        assert (await miner.receive_json_from(timeout=5))["job"]["job_id"] == first
        second = await sync_to_async(submit_offered)(client_api.user)
        nothing = await miner.receive_nothing(timeout=0.3)
        await miner.disconnect()
        return second, nothing

    second, nothing = async_to_sync(scenario)()
    assert nothing
    assert Job.objects.get(pk=second).status == JobStatus.QUEUED


def stream_and_finish(client_api, miner_api, register_miner):
    """Tokens of a pushed job, then the same after its result: what a follower and the miner got,
    and how often the job was read to fence them."""
    register_miner(miner_api)

    async def scenario():
        miner, job_id, job = await offered_and_assigned(miner_api, client_api.user)
        lease = job["lease_token"]
        await events_sent()  # the claim's status: it comes before the snapshot, not after
        follower = socket(f"/ws/jobs/{job_id}/", client_api.raw_key)
        assert (await follower.connect())[0]
        await follower.receive_json_from(timeout=5)  # the status snapshot
        piece = {"job_id": job_id, "index": 0, "text": "Hel", "lease_token": lease}
        with mock.patch.object(consumers, "job_tokens_relay", wraps=consumers.job_tokens_relay) as read:
            await miner.send_json_to({"type": "job.tokens", "tokens": [piece]})
            token = await follower.receive_json_from(timeout=5)
            reads_while_held = read.call_count
            await miner.send_json_to({"type": "job.tokens", "tokens": [{**piece, "lease_token": "0" * 32}]})
            forged = await miner.receive_json_from(timeout=5)
            body = {"result": {"text": "Hello"}, "lease_token": lease}
            answer = await sync_to_async(miner_api.post)(f"/v1/miners/{job_id}/result", body, format="json")
            assert answer.status_code == 200, answer.content
            finished = await follower.receive_json_from(timeout=5)
            late = {**piece, "index": 1, "text": "lo"}
            await miner.send_json_to({"type": "job.tokens", "tokens": [late]})
            refused = await miner.receive_json_from(timeout=5)
        await follower.disconnect()
        await miner.disconnect()
        return job_id, token, reads_while_held, forged, finished, refused

    return async_to_sync(scenario)()


def test_text_of_a_lease_the_socket_holds_is_relayed_without_reading_the_job_and_a_late_piece_refused(
    client_api, miner_api, register_miner
):
    job_id, token, reads_while_held, forged, finished, refused = stream_and_finish(
        client_api, miner_api, register_miner
    )
    assert (token["type"], token["job_id"], token["text"]) == ("job.token", job_id, "Hel")
    assert reads_while_held == 0
    assert forged == {"type": "job.tokens.refused", "job_ids": [job_id]}  # another lease token
    assert (finished["type"], finished["status"]) == ("job.status", JobStatus.COMPLETED)
    assert refused == {"type": "job.tokens.refused", "job_ids": [job_id]}  # the lease ended with the job


def test_a_lease_held_past_its_trust_period_is_checked_in_the_database_and_dropped_once_refused(
    client_api, miner_api, register_miner, monkeypatch
):
    monkeypatch.setattr(consumers.MinerConsumer, "LEASE_TRUST_SECONDS", 0.0)
    register_miner(miner_api)

    async def scenario():
        miner, job_id, job = await offered_and_assigned(miner_api, client_api.user)
        lease = job["lease_token"]
        # Ended behind the socket's back (no event reaches it): the database says so.
        await sync_to_async(Job.objects.filter(pk=job_id).update)(status=JobStatus.CANCELLED)
        piece = {"job_id": job_id, "index": 0, "text": "Hel", "lease_token": lease}
        await miner.send_json_to({"type": "job.tokens", "tokens": [piece]})
        refused = await miner.receive_json_from(timeout=5)
        still_held = job_id in held_leases()
        await miner.disconnect()
        return job_id, refused, still_held

    job_id, refused, still_held = async_to_sync(scenario)()
    assert refused == {"type": "job.tokens.refused", "job_ids": [job_id]}
    assert not still_held  # nor does the socket follow the job any longer


def test_a_tokens_only_socket_claims_nothing_and_fences_text_by_the_database(
    client_api, miner_api, register_miner, submit_job
):
    register_miner(miner_api)
    job_id = submit_job(client_api)["job_id"]

    async def scenario():
        miner = await miner_socket(miner_api, "/ws/miners/?mode=tokens")
        pushed_nothing = await miner.receive_nothing(timeout=0.3)
        polled = await sync_to_async(miner_api.post)("/v1/miners/poll", {}, format="json")
        lease = polled.json()["lease_token"]
        await events_sent()
        follower = socket(f"/ws/jobs/{job_id}/", client_api.raw_key)
        assert (await follower.connect())[0]
        await follower.receive_json_from(timeout=5)
        piece = {"job_id": job_id, "index": 0, "text": "Hel", "lease_token": lease}
        await miner.send_json_to({"type": "job.tokens", "tokens": [piece]})
        token = await follower.receive_json_from(timeout=5)
        await sync_to_async(miner_api.post)(
            f"/v1/miners/{job_id}/result", {"result": {"text": "Hel"}, "lease_token": lease}, format="json"
        )
        await miner.send_json_to({"type": "job.tokens", "tokens": [{**piece, "index": 1}]})
        refused = await miner.receive_json_from(timeout=5)
        await follower.disconnect()
        await miner.disconnect()
        return pushed_nothing, token, refused

    pushed_nothing, token, refused = async_to_sync(scenario)()
    assert pushed_nothing
    assert Job.objects.get(pk=job_id).status == JobStatus.COMPLETED
    assert (token["type"], token["text"]) == ("job.token", "Hel")
    assert refused == {"type": "job.tokens.refused", "job_ids": [job_id]}


def test_an_offer_that_fails_leaves_the_job_queued_for_the_announcement_to_bring_the_miner(
    client_api, miner_api, register_miner, monkeypatch
):
    register_miner(miner_api)

    claim = consumers.job_claim

    def broken_claim(**kwargs):
        if "job_id" in kwargs:  # the offer's claim of the one job; the socket's own claims work
            raise RuntimeError("the claim failed")
        return claim(**kwargs)

    async def scenario():
        miner = await miner_socket(miner_api)
        with mock.patch.object(consumers, "job_claim", broken_claim):
            job_id = await sync_to_async(submit_offered)(client_api.user)
        assigned = await miner.receive_json_from(timeout=5)  # claimed by the socket when announced
        await miner.disconnect()
        return job_id, assigned

    job_id, assigned = async_to_sync(scenario)()
    assert assigned["job"]["job_id"] == job_id
    assert Job.objects.get(pk=job_id).status == JobStatus.RUNNING


def test_a_status_event_sent_before_the_lease_began_leaves_it_held(client_api, miner_api, register_miner):
    register_miner(miner_api)

    async def scenario():
        miner, job_id, _ = await offered_and_assigned(miner_api, client_api.user)
        layer, group = get_channel_layer(), events.job_group(job_id)

        async def status_event(status: str, attempt: int) -> bool:
            sequence = events.status_sequence(status=status, attempt=attempt)
            event = {"type": "job.status", "job_id": job_id, "status": status, "attempt": attempt}
            await layer.group_send(group, {**event, "sequence": sequence})
            await asyncio.sleep(0.2)
            return job_id in held_leases()

        # Its queued status, sent late by the process that queued it, then its re-queue.
        kept = await status_event(JobStatus.QUEUED, 0), await status_event(JobStatus.QUEUED, 1)
        await miner.disconnect()
        return kept

    assert async_to_sync(scenario)() == (True, False)


def test_a_job_not_handed_back_fails_neither_the_others_nor_the_caller(client_api, monkeypatch):
    jobs = [
        job_submit(client=client_api.user, model="llama3.2", payload={"type": "inference", "prompt": "hi"}).job
        for _ in range(2)
    ]
    requeue, handed_back = consumers.job_requeue, []

    def first_fails(*, job_id, reason):
        if job_id == jobs[0].pk:
            raise OperationalError("the connection was lost")
        handed_back.append(job_id)
        return requeue(job_id=job_id, reason=reason)

    monkeypatch.setattr(consumers, "job_requeue", first_fails)
    consumers._hand_back(jobs=jobs)  # from the thread that offered them, or a socket's
    assert handed_back == [jobs[1].pk]


def test_a_job_leased_again_as_its_last_lease_is_dropped_stays_held(client_api, miner_api, register_miner):
    register_miner(miner_api)

    async def scenario():
        miner, job_id, _ = await offered_and_assigned(miner_api, client_api.user)
        (consumer,) = consumers._offered_sockets._sockets
        requeued = {"type": "job.status", "job_id": job_id, "status": JobStatus.QUEUED, "attempt": 1}
        consumer.lease_event({**requeued, "sequence": 4})
        # Claimed again by the same socket before the dropped lease's groups are left.
        again = SimpleNamespace(pk=job_id, lease_token="1" * 32, attempt=2, payload={"prompt": "hi"})
        consumer._hold(again)
        await asyncio.sleep(0.2)
        held = held_leases().get(job_id)
        await miner.disconnect()
        return held

    held = async_to_sync(scenario)()
    assert held is not None and held.attempt == 2


def test_a_socket_ended_by_an_error_of_its_own_claims_nothing_more_and_is_offered_nothing(
    client_api, miner_api, register_miner, monkeypatch
):
    register_miner(miner_api)

    def lost(**kwargs):
        raise OperationalError("the connection was lost")

    monkeypatch.setattr(consumers, "job_tokens_relay", lost)

    async def scenario():
        miner = await miner_socket(miner_api)
        (consumer,) = consumers._offered_sockets._sockets
        piece = {"job_id": str(uuid.uuid4()), "index": 0, "text": "Hel", "lease_token": "0" * 32}
        await miner.send_json_to({"type": "job.tokens", "tokens": [piece]})  # checked in the database
        with pytest.raises(OperationalError):
            await miner.receive_output(timeout=5)
        _, pushing = await asyncio.wait({consumer.pusher}, timeout=5)
        job_id = await sync_to_async(submit_offered)(client_api.user)
        return consumers._offered_sockets._sockets, consumer.waiter in wakeup.hub._waiters, pushing, job_id

    listed, waiting, pushing, job_id = async_to_sync(scenario)()
    assert (listed, waiting, pushing) == ([], False, set())
    assert Job.objects.get(pk=job_id).status == JobStatus.QUEUED
