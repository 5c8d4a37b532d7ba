"""Joining, leaving and listing swarms: miners and agents are members, with their live status."""

import pytest

from agents.services import agent_register
from jobs import services as job_services
from miners.models import Miner
from swarm.models import SwarmMember

pytestmark = pytest.mark.django_db


def test_a_miner_joining_without_a_swarm_starts_one(fake_miner):
    miner = fake_miner("m-1")
    joined = miner.join(role="monitor", priority="high", region="eu")
    assert joined["miner_id"] == "m-1"
    assert (joined["role"], joined["priority"], joined["region"], joined["status"]) == (
        "monitor",
        "high",
        "eu",
        "online",
    )
    assert joined["members"] == 1
    assert SwarmMember.objects.get(miner__miner_id="m-1").swarm_id.hex == joined["swarm_id"].replace("-", "")


def test_a_second_miner_joins_the_swarm_it_names(fake_miner):
    first, second = fake_miner("m-1"), fake_miner("m-2")
    swarm_id = first.join()["swarm_id"]
    joined = second.join(swarm_id)
    assert (joined["swarm_id"], joined["members"]) == (swarm_id, 2)


def test_joining_again_updates_the_membership_instead_of_adding_one(fake_miner):
    miner = fake_miner("m-1")
    swarm_id = miner.join(role="monitor")["swarm_id"]
    again = miner.join(swarm_id, role="load-balancer")
    assert (again["role"], again["members"]) == ("load-balancer", 1)
    assert SwarmMember.objects.filter(miner__miner_id="m-1").count() == 1


def test_an_agent_joins_through_its_miner(make_api):
    api = make_api("agent", "agent-owner")
    agent = agent_register(owner=api.user, agent_id="helper", agent_type="worker")
    response = api.post("/v1/swarm/join", {"agent_id": "helper", "role": "task-coordinator"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["agent_id"], body["miner_id"]) == ("helper", agent.miner.miner_id)


def test_an_agent_leaving_without_naming_itself_takes_all_its_owners_agents_out(make_api):
    api = make_api("agent", "agent-owner")
    for name in ("a-1", "a-2"):
        agent_register(owner=api.user, agent_id=name, agent_type="worker")
    swarm_id = api.post("/v1/swarm/join", {"agent_id": "a-1", "role": "monitor"}, format="json").json()["swarm_id"]
    api.post("/v1/swarm/join", {"agent_id": "a-2", "role": "monitor", "swarm_id": swarm_id}, format="json")
    left = api.post(f"/swarm/{swarm_id}/leave")
    assert left.status_code == 200, left.content
    assert sorted(left.json()["left"]) == ["agent:a-1", "agent:a-2"]


def test_an_agent_key_must_name_its_agent(make_api):
    api = make_api("agent", "agent-owner")
    response = api.post("/v1/swarm/join", {"role": "monitor"}, format="json")
    assert response.status_code == 422
    assert "agent_id" in response.json()["errors"]


def test_another_owners_agent_is_not_found(make_api):
    api = make_api("agent", "agent-owner")
    other = make_api("agent", "someone-else")
    agent_register(owner=other.user, agent_id="theirs", agent_type="worker")
    response = api.post("/v1/swarm/join", {"agent_id": "theirs", "role": "monitor"}, format="json")
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"capability": "x"}, "role"),
        ({"role": "king"}, "role"),
        ({"role": "monitor", "priority": "urgent"}, "priority"),
        ({"role": "monitor", "swarm_id": "not-a-uuid"}, "swarm_id"),
        ({"role": "monitor", "region": "r" * 65}, "region"),
    ],
)
def test_invalid_joins_are_422_naming_the_field(fake_miner, body, field):
    miner = fake_miner("m-1")
    response = miner.api.post("/v1/swarm/join", body, format="json")
    assert response.status_code == 422, response.content
    assert field in response.json()["errors"]


def test_joining_an_unknown_swarm_is_404(fake_miner):
    miner = fake_miner("m-1")
    response = miner.api.post(
        "/v1/swarm/join", {"role": "monitor", "swarm_id": "00000000-0000-0000-0000-000000000000"}, format="json"
    )
    assert response.status_code == 404
    assert response.json()["error_code"] == "SWARM_NOT_FOUND"


def test_clients_do_not_join(client_api):
    response = client_api.post("/v1/swarm/join", {"role": "monitor"}, format="json")
    assert response.status_code == 403


def test_a_banned_miner_cannot_join(fake_miner, django_user_model):
    miner = fake_miner("m-1")
    staff = django_user_model.objects.create(username="staff", is_staff=True)
    job_services.miner_ban(miner=Miner.objects.get(miner_id="m-1"), reason="fraud", actor=staff)
    response = miner.api.post("/v1/swarm/join", {"role": "monitor"}, format="json")
    assert response.status_code == 403


def test_the_list_shows_members_roles_and_live_status(fake_miner, client_api):
    first, second = fake_miner("m-1"), fake_miner("m-2")
    swarm_id = first.join(role="monitor")["swarm_id"]
    second.join(swarm_id, role="load-balancer")
    job_services.miner_take_offline(miner=Miner.objects.get(miner_id="m-2"))

    listed = client_api.get("/v1/swarm/list").json()
    assert listed["total"] == 1
    (swarm,) = listed["swarms"]
    assert (swarm["swarm_id"], swarm["status"], swarm["member_count"], swarm["running_tasks"]) == (
        swarm_id, "active", 2, 0,
    )  # fmt: skip
    members = {m["miner_id"]: (m["role"], m["status"]) for m in swarm["members"]}
    assert members == {"m-1": ("monitor", "online"), "m-2": ("load-balancer", "offline")}


def test_the_list_filters_by_swarm_and_status(fake_miner, client_api):
    first, second = fake_miner("m-1"), fake_miner("m-2")
    kept = first.join()["swarm_id"]
    emptied = second.join()["swarm_id"]
    assert second.api.post(f"/v1/swarm/{emptied}/leave").status_code == 200

    assert [s["swarm_id"] for s in client_api.get(f"/v1/swarm/list?swarm_id={kept}").json()["swarms"]] == [kept]
    assert [s["swarm_id"] for s in client_api.get("/v1/swarm/list?status=active").json()["swarms"]] == [kept]
    assert [s["swarm_id"] for s in client_api.get("/v1/swarm/list?status=inactive").json()["swarms"]] == [emptied]
    assert client_api.get("/v1/swarm/list?limit=0").status_code == 422
    assert client_api.get("/v1/swarm/list?status=sleeping").status_code == 422


def test_the_list_needs_a_key(client):
    assert client.get("/v1/swarm/list").status_code == 401


def test_leaving_ends_the_membership(fake_miner):
    first, second = fake_miner("m-1"), fake_miner("m-2")
    swarm_id = first.join()["swarm_id"]
    second.join(swarm_id)
    left = second.api.post(f"/v1/swarm/{swarm_id}/leave")
    assert left.status_code == 200, left.content
    assert left.json() == {"swarm_id": swarm_id, "status": "left", "left": ["m-2"]}
    listed = first.api.get(f"/v1/swarm/list?swarm_id={swarm_id}").json()["swarms"][0]
    assert [m["miner_id"] for m in listed["members"]] == ["m-1"]


def test_leaving_a_swarm_one_is_not_in_is_404(fake_miner):
    first, second = fake_miner("m-1"), fake_miner("m-2")
    swarm_id = first.join()["swarm_id"]
    response = second.api.post(f"/v1/swarm/{swarm_id}/leave")
    assert response.status_code == 404
    assert response.json()["error_code"] == "NOT_A_MEMBER"
    assert second.api.post("/v1/swarm/00000000-0000-0000-0000-000000000000/leave").status_code == 404


def test_the_swarm_aliases_answer_as_the_v1_routes(fake_miner, client_api):
    miner = fake_miner("m-1")
    joined = miner.api.post("/swarm/join", {"role": "monitor"}, format="json")
    assert joined.status_code == 201, joined.content
    swarm_id = joined.json()["swarm_id"]
    assert client_api.get("/swarm/list").json()["swarms"][0]["swarm_id"] == swarm_id
    assert miner.api.post(f"/swarm/{swarm_id}/leave").status_code == 200
