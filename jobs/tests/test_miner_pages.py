import re
from decimal import Decimal

from accounts.services import user_get_or_create
from jobs.selectors import miner_work_summary
from jobs.services import job_claim, job_fail, job_submit, miner_take_offline
from miners.capabilities import Capabilities
from miners.services import miner_register
from payments.templatetags.credits import credits


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


def test_miners_page_prints_earnings_trimmed_not_at_the_ledgers_precision(browser, alice, miner, finished_job):
    finished_job(alice)
    response = browser.get("/miners/")
    (shown,) = response.context["miners"]
    assert shown.earned.as_tuple().exponent <= -8, "the subquery's precision: the raw value has trailing zeros"
    (cell,) = re.findall(
        r'<td class="num">([0-9.,]+)</td>\s*<td class="num">(?:[0-9]+&nbsp;%|<span)', response.content.decode()
    )
    assert cell == credits(shown.earned)
    assert Decimal(cell) == shown.earned and not cell.endswith("0")
