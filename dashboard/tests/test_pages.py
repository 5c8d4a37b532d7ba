import re
from decimal import Decimal

from accounts.services import user_get_or_create
from jobs.models import JobStatus
from jobs.selectors import miner_work_summary
from jobs.services import job_claim, job_fail, job_submit, miner_take_offline
from miners.capabilities import Capabilities
from miners.services import miner_register
from payments.selectors import wallet_of


def test_miners_page_shows_online_miners_with_models_work_and_earnings(browser, alice, miner, finished_job):
    finished_job(alice)
    finished_job(alice)
    owner = user_get_or_create(username="other-owner")
    gone, _ = miner_register(owner=owner, miner_id="rig-gone", capabilities=Capabilities(models=("x",)))
    miner_take_offline(miner=gone)
    response = browser.get("/miners/")
    (shown,) = response.context["miners"]
    summary = miner_work_summary(miner=miner)
    assert shown.miner_id == "rig-1"
    assert (shown.jobs_completed, shown.units_served, shown.earned) == (
        summary["jobs_completed"],
        summary["units_served"],
        summary["earned"],
    )
    assert shown.earned > 0
    assert shown.units_last_hour == 14
    content = response.content.decode()
    assert "llama3.2, smollm2-135m" in content
    assert "rig-gone" not in content


def test_miners_page_shows_each_miners_reputation(browser, alice, miner, finished_job):
    finished_job(alice)
    finished_job(alice)
    finished_job(alice)
    job = job_submit(client=alice, model="llama3.2", payload={"model": "llama3.2", "prompt": "hi"}).job
    (running,) = job_claim(miner=miner, job_id=job.pk)
    job_fail(job_id=job.pk, miner=miner, error_code="CUDA_ERROR", error_message="", lease_token=running.lease_token)
    miner_register(
        owner=user_get_or_create(username="other-owner"), miner_id="rig-new", capabilities=Capabilities(models=("x",))
    )
    response = browser.get("/miners/")
    reputations = {shown.miner_id: shown.reputation for shown in response.context["miners"]}
    assert reputations == {"rig-1": 0.75, "rig-new": None}
    cells = re.findall(
        r'<td class="num">([^<]*|<span class="muted">new</span>)</td>\s*</tr>', response.content.decode()
    )
    assert cells == ["75&nbsp;%", '<span class="muted">new</span>']


def test_miners_page_reads_a_fixed_number_of_queries(browser, db, django_assert_max_num_queries):
    owner = user_get_or_create(username="gpu-owner")
    for i in range(10):
        miner_register(owner=owner, miner_id=f"rig-{i}", capabilities=Capabilities(models=("a", "b")))
    with django_assert_max_num_queries(6):
        response = browser.get("/miners/")
    assert len(response.context["miners"]) == 10


def test_network_page_renders_a_snapshot_before_any_socket(client, alice, miner, finished_job, queued_job):
    finished_job(alice)
    queued_job(alice)
    queued_job(alice)
    response = client.get("/network/")
    snapshot = response.context["snapshot"]
    assert snapshot["queue_depth"] == {"llama3.2": 2}
    assert snapshot["miners_online"] == 1
    assert snapshot["jobs_per_minute"] == 0.2
    assert snapshot["median_run_seconds"] is not None
    content = response.content.decode()
    assert 'id="network-snapshot"' in content
    assert 'data-socket-path="/ws/dashboard/"' in content
    assert set(snapshot) == {
        "jobs_per_minute",
        "queue_depth",
        "median_wait_seconds",
        "median_run_seconds",
        "tokens_per_second",
        "miners_online",
    }


def test_overview_shows_recent_jobs_balance_and_the_network(browser, alice, finished_job, queued_job):
    done = finished_job(alice)
    waiting = queued_job(alice)
    response = browser.get("/")
    assert list(response.context["recent_jobs"]) == [waiting, done]
    assert response.context["job_counts"] == {"total": 2, "active": 1, "completed": 1}
    assert f"{wallet_of(user=alice).balance} AITBC".encode() in response.content
    assert waiting.status == JobStatus.QUEUED
    assert response.context["wallet"].balance < Decimal(100)


def test_overview_reads_a_fixed_number_of_queries(browser, alice, finished_job, django_assert_max_num_queries):
    for _ in range(6):
        finished_job(alice)
    with django_assert_max_num_queries(12):
        browser.get("/")
