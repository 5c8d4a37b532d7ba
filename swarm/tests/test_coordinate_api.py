"""The coordination API's answers to bad and good requests: a clear 4xx for every bad one."""

import pytest

from jobs.models import Job, JobStatus
from swarm.models import SwarmShare, SwarmTask
from swarm.tests.conftest import MODEL

pytestmark = pytest.mark.django_db

TASK = {"prompt": "hi", "model": MODEL}


@pytest.fixture
def swarm_id(swarm_of):
    return swarm_of(3)[0]


def post(api, body):
    return api.post("/v1/swarm/coordinate", body, format="json")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"strategy": "anarchy"}, "strategy"),
        ({"task": None}, "task"),
        ({"task": 7}, "task"),
        ({"task": {}}, "task"),
        ({"task": {"model": MODEL}}, "task"),
        ({"task": {**TASK, "params": {"max_tokens": 0}}}, "task"),
        ({"strategy": "split", "task": {"model": MODEL, "input": "one text"}}, "task"),
        ({"strategy": "split", "task": {"model": MODEL, "input": []}}, "task"),
        ({"strategy": "split", "task": {"model": MODEL, "input": ["a", 2]}}, "task"),
        ({"strategy": "best_of", "task": {**TASK, "judge": 5}}, "task"),
        ({"task": {**TASK, "agreement": "fuzzy"}}, "task"),
        ({"task": {"task_data": ["not", "an", "object"]}}, "task"),
        ({"task": {"task_data": {}, "payment_amount": "-1"}}, "task"),
        ({"collaborators": 0}, "collaborators"),
        ({"collaborators": 33}, "collaborators"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"consensus_threshold": 1.5}, "consensus_threshold"),
        ({"swarm_id": "nope"}, "swarm_id"),
    ],
)
def test_invalid_coordinations_are_422_naming_the_field(client_api, swarm_id, body, field):
    response = post(client_api, {"swarm_id": swarm_id, "task": TASK, **body})
    assert response.status_code == 422, response.content
    assert field in response.json()["errors"]
    assert not SwarmTask.objects.exists()


def test_a_split_task_with_more_items_than_allowed_is_422(client_api, swarm_id, settings):
    settings.SWARM_MAX_SPLIT_ITEMS = 2
    response = post(
        client_api, {"swarm_id": swarm_id, "strategy": "split", "task": {"model": MODEL, "input": ["a"] * 3}}
    )
    assert response.status_code == 422


def test_an_unknown_swarm_is_404(client_api, swarm_id):
    response = post(client_api, {"swarm_id": "00000000-0000-0000-0000-000000000000", "task": TASK})
    assert (response.status_code, response.json()["error_code"]) == (404, "SWARM_NOT_FOUND")


def test_without_a_swarm_id_the_swarm_able_to_run_the_task_is_chosen(client_api, swarm_id, fake_miner):
    fake_miner("loner").join()  # a swarm of one
    response = post(client_api, {"task": TASK, "collaborators": 3})
    assert response.status_code == 202, response.content
    assert response.json()["swarm_id"] == swarm_id


def test_without_any_swarm_able_to_run_it_is_404(client_api, swarm_id, make_api, register_miner):
    register_miner(make_api("miner", "outsider", miner_id="outsider"), models=("served-outside-swarms",))
    response = post(client_api, {"task": {"prompt": "hi", "model": "served-outside-swarms"}})
    assert (response.status_code, response.json()["error_code"]) == (404, "SWARM_NOT_FOUND")


@pytest.mark.parametrize("in_swarm", [True, False])
def test_a_model_the_platform_does_not_know_is_422(client_api, swarm_id, in_swarm):
    body = {"task": {"prompt": "hi", "model": "nobody-serves-this"}}
    response = post(client_api, {"swarm_id": swarm_id, **body} if in_swarm else body)
    assert (response.status_code, response.json()["error_code"]) == (422, "UNKNOWN_MODEL"), response.content
    assert "model" in str(response.json()["errors"])
    assert not SwarmTask.objects.exists()


def test_a_known_model_whose_members_are_away_is_still_409(client_api, swarm_id, make_api, register_miner):
    register_miner(make_api("miner", "outsider", miner_id="outsider"), models=("served-outside-swarms",))
    body = {"swarm_id": swarm_id, "task": {"prompt": "hi", "model": "served-outside-swarms"}}
    response = post(client_api, body)
    assert (response.status_code, response.json()["error_code"]) == (409, "NOT_ENOUGH_MEMBERS")


def test_the_original_clis_body_is_understood(client_api, swarm_id, settings):
    settings.JOB_DEFAULT_MODEL = MODEL
    body = {"task": "hi", "collaborators": 2, "strategy": "consensus", "timeout_seconds": 3600}
    response = client_api.post("/swarm/coordinate", body, format="json")
    assert response.status_code == 202, response.content
    task = SwarmTask.objects.get()
    assert (task.strategy, task.model, task.payload["prompt"], task.collaborators) == ("redundant", MODEL, "hi", 2)


def test_more_collaborators_than_live_members_is_409(client_api, swarm_id):
    response = post(client_api, {"swarm_id": swarm_id, "task": TASK, "collaborators": 4})
    assert (response.status_code, response.json()["error_code"]) == (409, "NOT_ENOUGH_MEMBERS")
    assert not Job.objects.exists()


def test_redundant_members_must_have_distinct_owners_but_split_ones_need_not(client_api, fake_miner):
    first, second = fake_miner("a-1", owner="same"), fake_miner("a-2", owner="same")
    swarm_id = first.join()["swarm_id"]
    second.join(swarm_id)
    redundant = post(client_api, {"swarm_id": swarm_id, "task": TASK, "collaborators": 2})
    assert redundant.status_code == 409
    split = post(
        client_api,
        {"swarm_id": swarm_id, "strategy": "split", "task": {"model": MODEL, "input": ["x", "y"]}, "collaborators": 2},
    )
    assert split.status_code == 202, split.content


def test_a_wallet_short_of_the_shares_price_is_402_and_nothing_starts(client_api, swarm_id):
    response = post(client_api, {"swarm_id": swarm_id, "task": {**TASK, "payment_amount": "60"}, "collaborators": 2})
    assert (response.status_code, response.json()["error_code"]) == (402, "INSUFFICIENT_FUNDS")
    assert not SwarmTask.objects.exists() and not Job.objects.exists()


def test_each_share_is_a_job_of_the_client_pinned_to_its_member_with_its_escrow(client_api, swarm_id):
    response = post(client_api, {"swarm_id": swarm_id, "task": {**TASK, "payment_amount": "1.5"}})
    assert response.status_code == 202, response.content
    shares = SwarmShare.objects.select_related("job", "member")
    assert len(shares) == 3
    for share in shares:
        assert (share.job.client, share.job.req_miner_id, share.job.max_attempts) == (
            client_api.user, share.member.miner_id, 1,
        )  # fmt: skip
        assert (share.job.payment.status, share.job.price) == ("escrowed", 1.5)


def test_other_clients_tasks_are_not_found(client_api, other_client_api, swarm_id):
    task_id = post(client_api, {"swarm_id": swarm_id, "task": TASK}).json()["task_id"]
    assert other_client_api.get(f"/v1/swarm/tasks/{task_id}/status").status_code == 404
    assert other_client_api.post(f"/v1/swarm/tasks/{task_id}/consensus", {}, format="json").status_code == 404
    assert client_api.get("/v1/swarm/tasks/00000000-0000-0000-0000-000000000000/status").status_code == 404


def test_a_consensus_threshold_out_of_range_is_422(client_api, swarm_id):
    task_id = post(client_api, {"swarm_id": swarm_id, "task": TASK}).json()["task_id"]
    for threshold in (0, 2, "high"):
        response = client_api.post(
            f"/v1/swarm/tasks/{task_id}/consensus", {"consensus_threshold": threshold}, format="json"
        )
        assert response.status_code == 422, threshold


def test_a_running_task_has_no_consensus_yet(client_api, swarm_id):
    task_id = post(client_api, {"swarm_id": swarm_id, "task": TASK}).json()["task_id"]
    body = client_api.post(f"/v1/swarm/tasks/{task_id}/consensus", {}, format="json").json()
    assert (body["status"], body["consensus_reached"], body["output"], body["consensus_threshold"]) == (
        "running", False, None, 0.5,
    )  # fmt: skip


def test_status_counts_collaborators_and_progress(client_api, swarm_id):
    task_id = post(client_api, {"swarm_id": swarm_id, "task": TASK}).json()["task_id"]
    status = client_api.get(f"/v1/swarm/tasks/{task_id}/status").json()
    assert (status["status"], status["progress"]) == ("running", 0.0)
    assert (status["active_collaborators"], status["total_collaborators"]) == (3, 3)
    assert [m["outcome"] for m in status["members"]] == ["pending"] * 3


def test_cancelling_a_task_cancels_its_shares_and_refunds_them(client_api, swarm_id):
    task_id = post(client_api, {"swarm_id": swarm_id, "task": {**TASK, "payment_amount": "1"}}).json()["task_id"]
    cancelled = client_api.post(f"/v1/swarm/tasks/{task_id}/cancel")
    assert cancelled.status_code == 200, cancelled.content
    assert cancelled.json()["status"] == "cancelled"
    assert set(Job.objects.values_list("status", flat=True)) == {JobStatus.CANCELLED}
    assert set(Job.objects.values_list("payment__status", flat=True)) == {"refunded"}
    assert client_api.post(f"/v1/swarm/tasks/{task_id}/cancel").status_code == 409


def test_the_list_reads_a_fixed_number_of_queries(client_api, swarm_of, django_assert_max_num_queries):
    for _ in range(3):
        swarm_of(2)
    with django_assert_max_num_queries(8):
        response = client_api.get("/v1/swarm/list")
    assert response.json()["total"] >= 1
