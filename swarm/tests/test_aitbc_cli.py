"""The original AITBC CLI's swarm commands, as it sends them (without /v1, X-Api-Key only)."""

import pytest

from swarm.tests.conftest import MODEL

# The task moves on after each answer commits.
pytestmark = pytest.mark.django_db(transaction=True)


def test_the_clis_swarm_commands_work_as_it_sends_them(fake_miner, client_api, settings):
    settings.JOB_DEFAULT_MODEL = MODEL
    miners = [fake_miner(f"cli-{i}") for i in range(3)]
    # swarm join --role … --capability … [--region …] --priority …
    cli_join = {"role": "task-coordinator", "capability": "gpu", "priority": "normal", "region": "eu"}
    joined = miners[0].api.post("/swarm/join", cli_join, format="json")
    assert joined.status_code == 201, joined.content
    swarm_id = joined.json()["swarm_id"]
    for miner in miners[1:]:
        miner.join(swarm_id)  # the CLI starts a swarm; others join it by id
    # swarm list [--swarm-id] [--status] --limit 20
    listed = client_api.get("/swarm/list", {"limit": 20, "swarm_id": swarm_id, "status": "active"})
    assert listed.status_code == 200 and listed.json()["swarms"][0]["member_count"] == 3
    # swarm coordinate --task … --collaborators 3 --strategy consensus --timeout 3600
    body = {"task": "What is 2+2?", "collaborators": 3, "strategy": "consensus", "timeout_seconds": 3600}
    started = client_api.post("/swarm/coordinate", body, format="json")
    assert started.status_code == 202, started.content
    task_id = started.json()["task_id"]
    for miner in miners:
        miner.answer("4")
    # swarm status TASK_ID: the fields its --real-time view prints
    status = client_api.get(f"/swarm/tasks/{task_id}/status").json()
    assert (status["status"], status["progress"], status["active_collaborators"], status["total_collaborators"]) == (
        "completed", 100.0, 0, 3,
    )  # fmt: skip
    # swarm consensus TASK_ID --consensus-threshold 0.7
    consensus = client_api.post(f"/swarm/tasks/{task_id}/consensus", {"consensus_threshold": 0.7}, format="json")
    assert consensus.status_code == 200
    assert (consensus.json()["consensus_reached"], consensus.json()["output"]) == (True, "4")
    # swarm leave SWARM_ID
    left = miners[0].api.post(f"/swarm/{swarm_id}/leave")
    assert (left.status_code, left.json()["left"]) == (200, ["cli-0"])
