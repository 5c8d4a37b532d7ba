"""Coordinated tasks end to end: fake miners answer through the real HTTP miner API, the jobs' hook
advances the task, and the money and reputations follow the verdicts. On PostgreSQL, committed."""

from datetime import timedelta
from decimal import Decimal
from functools import partial

import pytest
from django.utils import timezone

from jobs import services as job_services
from jobs.models import FailedAttempt, Job, JobStatus, Verdict
from jobs.selectors import miner_reputation
from miners.models import Miner
from payments.selectors import wallet_of
from swarm.models import SwarmShare, SwarmTask
from swarm.services import task_advance, tasks_advance_running
from swarm.tests.conftest import MODEL
from tests.factories import JobFactory
from tests.threads import run_at_once

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def coordinate(api, swarm_id, task, **body):
    response = api.post(
        "/v1/swarm/coordinate",
        {"swarm_id": swarm_id, "task": task, "timeout_seconds": 600, **body},
        format="json",
    )
    assert response.status_code == 202, response.content
    return response.json()


def balance(miner_or_client) -> Decimal:
    user = miner_or_client.api.user if hasattr(miner_or_client, "api") else miner_or_client.user
    wallet = wallet_of(user=user)
    return wallet.balance if wallet is not None else Decimal(0)


def test_a_lying_member_is_outvoted_paid_nothing_and_loses_reputation(swarm_of, client_api):
    swarm_id, (first, second, liar) = swarm_of(3)
    before = {m.miner_id: balance(m) for m in (first, second, liar)}
    client_before = balance(client_api)
    task = {"prompt": "What is the capital of France?", "model": MODEL, "payment_amount": "2"}
    started = coordinate(client_api, swarm_id, task, strategy="redundant", collaborators=3)
    assert (started["status"], started["strategy"], started["total_collaborators"]) == ("running", "redundant", 3)

    first.answer("Paris")
    second.answer("  Paris ")  # the same text once whitespace is normalised
    liar.answer("Lyon")

    status = client_api.get(f"/v1/swarm/tasks/{started['task_id']}/status").json()
    assert (status["status"], status["progress"], status["active_collaborators"]) == ("completed", 100.0, 0)
    assert status["output"] == "Paris"
    outcomes = {m["miner_id"]: m["outcome"] for m in status["members"]}
    assert outcomes == {"member-0": "agreed", "member-1": "agreed", "member-2": "outvoted"}

    consensus = client_api.post(
        f"/v1/swarm/tasks/{started['task_id']}/consensus", {"consensus_threshold": 0.66}, format="json"
    ).json()
    assert consensus["consensus_reached"] is True
    assert (consensus["output"], consensus["agreeing"], consensus["dissenters"]) == (
        "Paris", ["member-0", "member-1"], ["member-2"],
    )  # fmt: skip
    assert consensus["agreement"] == pytest.approx(2 / 3)
    # The original CLI's default threshold asks for more than two of three.
    strict = client_api.post(
        f"/swarm/tasks/{started['task_id']}/consensus", {"consensus_threshold": 0.7}, format="json"
    )
    assert strict.json()["consensus_reached"] is False

    # The liar is paid nothing; the honest members are paid; the client paid for two answers only.
    assert balance(liar) == before["member-2"]
    assert balance(first) > before["member-0"] and balance(second) > before["member-1"]
    assert balance(client_api) == client_before - Decimal("4")
    liar_job = SwarmShare.objects.get(member__miner__miner_id="member-2").job
    assert liar_job.payment.status == "refunded"
    # Its answer is judged wrong: its reputation drops below the honest members'.
    assert Verdict.objects.get(job=liar_job).kind == "outvoted"
    liar_miner, honest_miner = Miner.objects.get(miner_id="member-2"), Miner.objects.get(miner_id="member-0")
    assert miner_reputation(miner=liar_miner) < miner_reputation(miner=honest_miner) == 1.0
    assert liar_miner.reputation_score < 1.0


def test_no_two_answers_agreeing_fails_with_no_consensus_and_refunds_all(swarm_of, client_api):
    swarm_id, miners = swarm_of(3)
    client_before = balance(client_api)
    started = coordinate(
        client_api, swarm_id, {"prompt": "Pick a number", "model": MODEL, "payment_amount": "1"}, strategy="redundant"
    )
    for miner, answer in zip(miners, ("1", "2", "3"), strict=True):
        miner.answer(answer)
    status = client_api.get(f"/v1/swarm/tasks/{started['task_id']}/status").json()
    assert (status["status"], status["error_code"]) == ("failed", "NO_CONSENSUS")
    assert balance(client_api) == client_before
    assert not Verdict.objects.exists()
    consensus = client_api.post(f"/v1/swarm/tasks/{started['task_id']}/consensus", {}, format="json").json()
    assert (consensus["consensus_reached"], consensus["output"]) == (False, None)


def test_split_over_three_members_aggregates_in_input_order(swarm_of, client_api):
    swarm_id, miners = swarm_of(3)
    items = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
    started = coordinate(client_api, swarm_id, {"model": MODEL, "input": items}, strategy="split", collaborators=3)
    assert started["shares"] == 6
    shares = SwarmShare.objects.filter(task=started["task_id"]).select_related("member__miner", "job")
    # Contiguous runs: two items per member, each a job pinned to it.
    assert {s.index: s.member.miner.miner_id for s in shares} == {
        0: "member-0", 1: "member-0", 2: "member-1", 3: "member-1", 4: "member-2", 5: "member-2",
    }  # fmt: skip
    assert all(s.job.req_miner_id == s.member.miner_id for s in shares)
    # The members answer out of order: the last member first.
    for miner in reversed(miners):
        miner.answer(str.upper)
        miner.answer(str.upper)
    status = client_api.get(f"/v1/swarm/tasks/{started['task_id']}/status").json()
    assert status["status"] == "completed"
    assert status["output"] == [item.upper() for item in items]


def test_a_member_that_goes_silent_mid_task_is_replaced(swarm_of, fake_miner, client_api, settings):
    swarm_id, (first, second, silent) = swarm_of(3)
    spare = fake_miner("spare")
    spare.join(swarm_id)
    started = coordinate(
        client_api, swarm_id, {"prompt": "2+2?", "model": MODEL}, strategy="redundant", collaborators=3
    )
    task_id = started["task_id"]
    # The spare joined last: the first three members hold the shares.
    assert set(SwarmShare.objects.filter(task=task_id).values_list("member__miner__miner_id", flat=True)) == {
        "member-0", "member-1", "member-2",
    }  # fmt: skip
    first.answer("4")
    taken = silent.poll()  # it takes its share, then says nothing more
    assert taken is not None
    Job.objects.filter(pk=taken["job_id"]).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    job_services.jobs_requeue_lapsed()

    status = client_api.get(f"/v1/swarm/tasks/{task_id}/status").json()
    assert status["status"] == "running"
    by_miner = {m["miner_id"]: m for m in status["members"]}
    assert by_miner["member-2"]["outcome"] == "replaced"
    assert by_miner["spare"]["outcome"] == "pending"
    assert by_miner["spare"]["index"] == by_miner["member-2"]["index"]
    assert (status["total_collaborators"], status["active_collaborators"]) == (3, 2)

    spare.answer("4")
    second.answer("4")
    status = client_api.get(f"/v1/swarm/tasks/{task_id}/status").json()
    assert (status["status"], status["output"]) == ("completed", "4")
    assert {m["miner_id"] for m in status["members"] if m["outcome"] == "agreed"} == {"member-0", "member-1", "spare"}


def test_a_member_taken_offline_before_taking_its_share_is_replaced_by_housekeeping(swarm_of, fake_miner, client_api):
    swarm_id, (first, _gone) = swarm_of(2)
    spare = fake_miner("spare")
    spare.join(swarm_id)
    started = coordinate(client_api, swarm_id, {"model": MODEL, "input": ["a", "b"]}, strategy="split", collaborators=2)
    job_services.miner_take_offline(miner=Miner.objects.get(miner_id="member-1"))
    tasks_advance_running()
    first.answer("A")
    spare.answer("B")
    status = client_api.get(f"/v1/swarm/tasks/{started['task_id']}/status").json()
    assert (status["status"], status["output"]) == ("completed", ["A", "B"])
    replaced = SwarmShare.objects.get(task=started["task_id"], outcome="replaced")
    assert replaced.job.status == JobStatus.CANCELLED


def test_a_member_that_leaves_mid_task_hands_its_share_on(swarm_of, fake_miner, client_api):
    swarm_id, (_first, leaving) = swarm_of(2)
    spare = fake_miner("spare")
    spare.join(swarm_id)
    started = coordinate(client_api, swarm_id, {"prompt": "hi", "model": MODEL}, strategy="best_of", collaborators=2)
    assert leaving.api.post(f"/v1/swarm/{swarm_id}/leave").status_code == 200
    assert SwarmShare.objects.filter(task=started["task_id"], member__miner__miner_id="spare").exists()
    assert leaving.poll() is None  # its job was cancelled


def test_best_of_waits_for_the_clients_choice(swarm_of, client_api):
    swarm_id, miners = swarm_of(3)
    started = coordinate(
        client_api, swarm_id, {"prompt": "A haiku", "model": MODEL}, strategy="best_of", collaborators=3
    )
    for miner, text in zip(miners, ("one", "two", "three"), strict=True):
        miner.answer(text)
    task_url = f"/v1/swarm/tasks/{started['task_id']}"
    assert client_api.get(f"{task_url}/status").json()["status"] == "awaiting_judgement"
    assert client_api.post(f"{task_url}/choose", {"choice": 3}, format="json").status_code == 422
    chosen = client_api.post(f"{task_url}/choose", {"choice": 1}, format="json")
    assert chosen.status_code == 200, chosen.content
    body = chosen.json()
    assert (body["status"], body["output"]) == ("completed", "two")
    assert [m["outcome"] for m in body["members"]] == ["not_chosen", "chosen", "not_chosen"]
    assert client_api.post(f"{task_url}/choose", {"choice": 0}, format="json").status_code == 409
    assert client_api.post(f"{task_url}/consensus", {}, format="json").status_code == 409


def test_best_of_judged_by_a_model_job(swarm_of, fake_miner, client_api):
    swarm_id, miners = swarm_of(2)
    judge = fake_miner("judge")  # not a member: it serves the judging model
    task = {"prompt": "A slogan", "model": MODEL, "judge": MODEL}
    started = coordinate(client_api, swarm_id, task, strategy="best_of", collaborators=2)
    miners[0].answer("first slogan")
    miners[1].answer("second slogan")
    judged = judge.answer("2")
    assert "Answer 2: second slogan" in judged["payload"]["prompt"]
    status = client_api.get(f"/v1/swarm/tasks/{started['task_id']}/status").json()
    assert (status["status"], status["output"]) == ("completed", "second slogan")


def test_a_task_past_its_timeout_fails_and_refunds(swarm_of, client_api):
    swarm_id, miners = swarm_of(2)
    client_before = balance(client_api)
    started = coordinate(
        client_api, swarm_id, {"model": MODEL, "input": ["a", "b"], "payment_amount": "1"}, strategy="split",
        collaborators=2,
    )  # fmt: skip
    miners[0].answer("A")
    SwarmTask.objects.filter(pk=started["task_id"]).update(deadline=timezone.now() - timedelta(seconds=1))
    tasks_advance_running()
    status = client_api.get(f"/v1/swarm/tasks/{started['task_id']}/status").json()
    assert (status["status"], status["error_code"]) == ("failed", "TIMEOUT")
    # The answered share was paid; the one cancelled was refunded.
    assert balance(client_api) == client_before - Decimal("1")


def test_processes_advancing_a_task_at_once_replace_a_silent_member_once(swarm_of, fake_miner, client_api):
    swarm_id, (_first, silent) = swarm_of(2)
    for name in ("spare-a", "spare-b"):
        fake_miner(name).join(swarm_id)
    task_id = coordinate(client_api, swarm_id, {"prompt": "hi", "model": MODEL}, strategy="redundant", collaborators=2)[
        "task_id"
    ]
    # Silent, and not yet noticed: no job of its ended, so no hook ran.
    Miner.objects.filter(miner_id=silent.miner_id).update(status="offline")
    # Errors are what a process without the task's lock would meet.
    assert run_at_once([partial(task_advance, task_id=task_id)] * 6) == []
    shares = SwarmShare.objects.filter(task=task_id)
    assert shares.count() == 3
    assert shares.filter(outcome="replaced").get().member.miner.miner_id == silent.miner_id
    assert shares.filter(outcome="pending").count() == 2


def test_agents_take_part_through_their_miners(make_api, client_api):
    agents = []
    for name in ("agent-a", "agent-b"):
        api = make_api("agent", f"owner-of-{name}")
        registered = api.post("/agents/register", {"agent_id": name, "agent_type": "worker"}, format="json")
        assert registered.status_code == 200, registered.content
        agents.append((api, name))
    swarm_id = None
    for api, name in agents:
        body = {"agent_id": name, "role": "task-coordinator", **({"swarm_id": swarm_id} if swarm_id else {})}
        joined = api.post("/v1/swarm/join", body, format="json")
        assert joined.status_code == 201, joined.content
        swarm_id = joined.json()["swarm_id"]
    task = {"task_data": {"task_type": "sum", "numbers": [2, 2]}, "payment_amount": "1"}
    started = coordinate(client_api, swarm_id, task, strategy="redundant", collaborators=2)

    for api, name in agents:
        polled = api.post(f"/agents/{name}/poll", {}, format="json")
        assert polled.status_code == 200, polled.content
        (given,) = polled.json()["tasks"]
        assert given["task_data"]["numbers"] == [2, 2]
        reported = api.post(
            f"/tasks/{given['task_id']}/result",
            {"agent_id": name, "result": "4", "lease_token": given["lease_token"]},
            format="json",
        )
        assert reported.status_code == 200, reported.content
    status = client_api.get(f"/v1/swarm/tasks/{started['task_id']}/status").json()
    assert (status["status"], status["output"]) == ("completed", "4")
    assert {(m["agent_id"], m["outcome"]) for m in status["members"]} == {("agent-a", "agreed"), ("agent-b", "agreed")}


def test_an_answer_that_arrives_as_its_member_is_replaced_is_kept(swarm_of, fake_miner, client_api, monkeypatch):
    swarm_id, (first, late) = swarm_of(2)
    fake_miner("spare").join(swarm_id)
    task = {"prompt": "hi", "model": MODEL, "payment_amount": "1"}
    task_id = coordinate(client_api, swarm_id, task, strategy="redundant", collaborators=2)["task_id"]
    first.answer("ok")
    taken = late.poll()
    Miner.objects.filter(miner_id=late.miner_id).update(status="offline")
    cancel = job_services.job_cancel

    def answered_first(*, job_id):
        # The member's result commits between the task reading its share and cancelling its job.
        late.api.post(
            f"/v1/miners/{taken['job_id']}/result", {"result": {"text": "ok"}, "lease_token": taken["lease_token"]},
            format="json",
        )  # fmt: skip
        return cancel(job_id=job_id)

    monkeypatch.setattr("swarm.services.job_services.job_cancel", answered_first)
    task_advance(task_id=task_id)
    status = client_api.get(f"/v1/swarm/tasks/{task_id}/status").json()
    assert (status["status"], status["output"]) == ("completed", "ok")
    assert {m["miner_id"]: m["outcome"] for m in status["members"]} == {"member-0": "agreed", "member-1": "agreed"}


def test_a_liar_suspended_for_its_lies_shows_so_and_gets_no_more_shares(swarm_of, client_api, settings):
    settings.VERIFICATION_SUSPEND_AFTER_WRONG_ANSWERS = 1
    swarm_id, (first, second, liar) = swarm_of(3)
    coordinate(client_api, swarm_id, {"prompt": "2+2?", "model": MODEL}, strategy="redundant", collaborators=3)
    first.answer("4")
    second.answer("4")
    liar.answer("5")

    members = client_api.get(f"/v1/swarm/list?swarm_id={swarm_id}").json()["swarms"][0]["members"]
    assert {m["miner_id"]: m["status"] for m in members}["member-2"] == "suspended"
    again = client_api.post(
        "/v1/swarm/coordinate",
        {"swarm_id": swarm_id, "task": {"prompt": "3+3?", "model": MODEL}, "collaborators": 3},
        format="json",
    )
    assert (again.status_code, again.json()["error_code"]) == (409, "NOT_ENOUGH_MEMBERS")


def test_members_of_equal_priority_are_chosen_by_reputation(swarm_of, client_api):
    swarm_id, _ = swarm_of(3)
    # The first member to join failed one of its two attempts: it ranks below the two others, of
    # equal priority with no record yet.
    first = Miner.objects.get(miner_id="member-0")
    JobFactory(completed_by=first)
    FailedAttempt.objects.create(job=JobFactory(claimed_by=first), miner=first, attempt=1, error_code="TIMEOUT")

    started = coordinate(
        client_api, swarm_id, {"prompt": "2+2?", "model": MODEL}, strategy="redundant", collaborators=2
    )

    chosen = SwarmShare.objects.filter(task_id=started["task_id"]).values_list("member__miner__miner_id", flat=True)
    assert sorted(chosen) == ["member-1", "member-2"]
