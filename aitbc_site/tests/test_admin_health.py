"""The admin home's health panel: each figure counts the right rows and links to the list of them."""

import html
import re
from datetime import timedelta

from django.urls import reverse
from django.utils import timezone

from jobs.models import FailedAttempt, Job, JobStatus
from miners.models import Miner

HOME = reverse("admin:index")
HEALTH = reverse("admin:health")


def poll(api):
    return api.post("/v1/miners/poll", {"max_wait_seconds": 0}, format="json")


def link(page: str, element_id: str) -> tuple[str, str]:
    """The href and the text of the link with ``element_id``."""
    found = re.search(rf'<a id="{element_id}" href="([^"]+)">([^<]*)</a>', page)
    assert found, element_id
    return html.unescape(found.group(1)), found.group(2)


def listed(admin_client, url) -> list:
    response = admin_client.get(url)
    assert response.status_code == 200, url
    return list(response.context["cl"].result_list)


def test_failures_and_miner_states_link_to_what_they_count(
    admin_client, make_api, register_miner, client_api, submit_job
):
    flaky = make_api("miner", "flaky-owner", miner_id="flaky")
    register_miner(flaky)
    register_miner(make_api("miner", "idle-owner", miner_id="idle"))
    Miner.objects.filter(miner_id="idle").update(draining=True)
    job = submit_job(client_api)
    assert poll(flaky).json()["job_id"] == job["job_id"]
    failed = flaky.post(f"/v1/miners/{job['job_id']}/fail", {"error_code": "OUT_OF_MEMORY"}, format="json")
    assert failed.status_code == 200, failed.content

    page = admin_client.get(HOME).content.decode()

    failures_url, failures = link(page, "health-failures")
    assert failures == "1"
    assert [a.error_code for a in listed(admin_client, failures_url)] == ["OUT_OF_MEMORY"]
    draining_url, draining = link(page, "health-miners-draining")
    assert draining == "1"
    assert [m.miner_id for m in listed(admin_client, draining_url)] == ["idle"]
    assert (
        '<tr class="health-worst"><td><a href="' in page and ">flaky</a></td><td>1</td><td>0</td><td>100%</td>" in page
    )
    assert 'class="outcome-chart"' in page and ": 0 completed, 1 failed</title>" in page


def test_stuck_and_unserved_jobs_are_counted_and_linked(
    admin_client, miner_api, register_miner, client_api, submit_job
):
    register_miner(miner_api)
    running = submit_job(client_api)
    assert poll(miner_api).json()["job_id"] == running["job_id"]
    Job.objects.filter(pk=running["job_id"]).update(started_at=timezone.now() - timedelta(hours=2))
    unserved = submit_job(client_api, model="nobody-serves-this")

    page = admin_client.get(HEALTH).content.decode()

    stuck_url = html.unescape(re.search(r'class="health-stuck">.*?href="([^"]+)"', page).group(1))
    assert [str(j.pk) for j in listed(admin_client, stuck_url)] == [running["job_id"]]
    unserved_url = html.unescape(re.search(r'class="health-unserved">.*?href="([^"]+)"', page).group(1))
    assert [str(j.pk) for j in listed(admin_client, unserved_url)] == [unserved["job_id"]]


def test_expiries_count_jobs_expired_in_the_last_hour(admin_client, client_api, submit_job):
    job = submit_job(client_api)
    Job.objects.filter(pk=job["job_id"]).update(status=JobStatus.EXPIRED, completed_at=timezone.now())

    url, count = link(admin_client.get(HEALTH).content.decode(), "health-expiries")

    assert count == "1"
    assert [str(j.pk) for j in listed(admin_client, url)] == [job["job_id"]]
    assert not FailedAttempt.objects.exists()


def test_escrow_held_is_shown_and_links_to_escrowed_payments(admin_client, client_api, submit_job):
    job = submit_job(client_api, payment_amount="3")

    url, shown = link(admin_client.get(HEALTH).content.decode(), "health-escrow")

    assert shown == "3 AITBC"
    assert [p.payment_id for p in listed(admin_client, url)] == [Job.objects.get(pk=job["job_id"]).payment_id]


def test_the_health_panel_is_for_staff_only(client, client_api):
    assert client.get(HEALTH).status_code == 302
