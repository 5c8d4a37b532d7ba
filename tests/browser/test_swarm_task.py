"""A swarm task's page follows its shares live: each share's job socket updates its row, and the page
shows the task's new state once a share ends."""

from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from accounts.services import user_get_or_create
from jobs.services import job_claim, job_complete
from miners.capabilities import Capabilities
from miners.services import miner_register
from swarm.models import MemberRole
from swarm.services import member_join, task_coordinate

PASSWORD = "a-long-browser-password"
MODEL = "llama3.2"


def test_a_swarm_task_page_shows_its_shares_answers_and_the_vote_as_they_come(page, log_in):
    client = get_user_model().objects.create_user(username="erin", password=PASSWORD)
    miners, swarm = [], None
    for i in range(3):
        miner, _ = miner_register(
            owner=user_get_or_create(username=f"owner-{i}"), miner_id=f"member-{i}",
            capabilities=Capabilities(models=(MODEL,)),
        )  # fmt: skip
        member, _ = member_join(miner=miner, role=MemberRole.TASK_COORDINATOR, swarm_id=swarm)
        swarm, miners = member.swarm_id, [*miners, miner]
    task = task_coordinate(
        client=client, swarm=member.swarm, strategy="redundant", job_type="inference", model=MODEL,
        payload={"type": "inference", "model": MODEL, "prompt": "2+2?"}, collaborators=3, timeout_seconds=600,
    )  # fmt: skip
    log_in(page, "erin", PASSWORD)
    page.goto(f"/swarms/tasks/{task.pk}/")
    expect(page.locator("#live-note")).to_have_text("This page follows the running shares live.")
    expect(page.locator("#task-status")).to_have_text("running")

    shares = {share.member.miner_id: share.job_id for share in task.shares.select_related("member")}
    for miner, answer in zip(miners, ("4", "4", "5"), strict=True):
        (claimed,) = job_claim(miner=miner, job_id=shares[miner.pk])
        expect(page.locator(f'[data-job-status="{claimed.pk}"]')).to_have_text("running")
        job_complete(job_id=claimed.pk, miner=miner, result={"text": answer}, lease_token=claimed.lease_token)
    expect(page.locator("#task-status")).to_have_text("completed")
    expect(page.get_by_text("Outvoted (paid nothing): member-2")).to_be_visible()
