"""In a real browser: submit a job and follow it live, watch the network page move, drain a miner."""

import json
import re
import time

import httpx
import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from inference.testing import TINY
from jobs.models import Job, JobStatus
from miners import services as miner_services
from miners.models import Miner

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

PASSWORD = "correct-horse-battery-staple"


def test_submitted_job_streams_its_tokens_and_its_receipt_verifies(page, log_in):
    get_user_model().objects.create_user(username="carol", password=PASSWORD)
    log_in(page, "carol", PASSWORD)
    page.goto("/jobs/")
    page.get_by_label("Model").select_option("tiny-gpt2")
    page.get_by_label("Prompt").fill("The network of miners")
    page.get_by_label("Max tokens").fill("40")
    page.get_by_role("button", name="Submit").click()

    page.wait_for_url(re.compile(r"/jobs/[0-9a-f-]{36}/$"))
    job_id = page.locator("#job").get_attribute("data-job-id")
    page.evaluate("window.__notReloaded = true")
    expect(page.locator("#job-output")).not_to_be_empty(timeout=20_000)
    expect(page.locator("#job-status")).to_have_text(re.compile("completed", re.I), timeout=20_000)
    assert page.evaluate("window.__notReloaded") is True, "the page reloaded"
    assert Job.objects.get(pk=job_id).status == JobStatus.COMPLETED

    expect(page.locator("#receipt-box")).to_be_visible()
    expect(page.locator("#opening-box")).to_be_visible()
    page.get_by_role("button", name="Verify").click()
    expect(page.locator("#verify-result")).to_have_text(re.compile("Valid: .* for this job's input and output"))


def _on_live_job_list(page, log_in, make_api, username: str):
    """Sign ``username`` in and open *My jobs*, live; the user's client API key."""
    api = make_api("client", username)
    api.user.set_password(PASSWORD)
    api.user.save(update_fields=["password"])
    log_in(page, username, PASSWORD)
    page.goto("/jobs/")
    expect(page.locator("#jobs-live")).to_have_text("Live.")
    return api


def _submit_from_a_program(server_url: str, api, prompt: str, max_tokens: int) -> str:
    payload = {"model": TINY, "prompt": prompt, "params": {"max_tokens": max_tokens}}
    submitted = httpx.post(f"{server_url}/v1/jobs", json={"payload": payload}, headers={"X-Api-Key": api.raw_key})
    assert submitted.status_code == 201, submitted.text
    return submitted.json()["job_id"]


def test_my_jobs_list_shows_a_job_submitted_elsewhere_and_follows_it_to_completion(page, log_in, make_api, server_url):
    api = _on_live_job_list(page, log_in, make_api, "frank")
    expect(page.locator("#job-rows")).to_contain_text("No jobs yet.")
    page.evaluate("window.__notReloaded = true")

    job_id = _submit_from_a_program(server_url, api, "Submitted from a program", max_tokens=8)
    row = page.locator(f'#job-rows tr[data-job-id="{job_id}"]')
    expect(row).to_be_visible(timeout=10_000)
    expect(row.locator(".badge")).to_have_text("Completed", timeout=20_000)
    expect(page.locator("#job-rows")).not_to_contain_text("No jobs yet.")
    assert page.evaluate("window.__notReloaded") is True, "the page reloaded"


def test_my_jobs_list_says_so_when_the_user_signed_out_elsewhere(page, log_in, make_api, server_url):
    api = _on_live_job_list(page, log_in, make_api, "gina")

    other_tab = page.context.new_page()
    other_tab.goto("/jobs/")
    other_tab.get_by_role("button", name="Log out").click()
    other_tab.wait_for_url(re.compile(r"/login/"))

    _submit_from_a_program(server_url, api, "After signing out", max_tokens=4)
    expect(page.locator("#jobs-live")).to_have_text(re.compile("signed out"), timeout=10_000)
    expect(page.locator("#job-rows")).to_contain_text("No jobs yet.")


def test_network_page_moves_when_a_job_completes(page, log_in):
    get_user_model().objects.create_user(username="dave", password=PASSWORD)
    log_in(page, "dave", PASSWORD)  # the dashboard socket wants a signed-in user
    network = page.context.new_page()
    network.goto("/network/")
    expect(network.locator("#network-live")).to_have_text("Live.")
    figure = network.locator("#stat-jobs_per_minute")
    expect(figure).to_have_text("0")

    page.goto("/jobs/")
    page.get_by_label("Model").select_option("tiny-gpt2")
    page.get_by_label("Prompt").fill("Blocks and receipts")
    page.get_by_label("Max tokens").fill("8")
    page.get_by_role("button", name="Submit").click()
    expect(page.locator("#job-status")).to_have_text(re.compile("completed", re.I), timeout=20_000)

    # network.stats arrives every 5 s over the network page's socket; that page is not reloaded.
    expect(figure).not_to_have_text("0", timeout=15_000)
    assert float(figure.inner_text()) > 0
    expect(network.locator("#network-live")).to_have_text("Live.")


def test_a_miner_drained_in_the_admin_gets_no_job(page, log_in, make_api, register_miner, submit_job):
    get_user_model().objects.create_superuser(username="root", password=PASSWORD, email="root@example.com")
    miner_api = make_api("miner", "gpu-owner", miner_id="drainee")
    register_miner(miner_api, models=("llama3.2",))

    log_in(page, "root", PASSWORD, path="/admin/login/?next=/admin/miners/miner/")
    page.goto("/admin/miners/miner/")
    row = page.locator("#result_list tr", has_text="drainee")
    row.locator("input.action-select").check()
    page.locator("select[name=action]").select_option("drain")
    page.locator("button[name=index], input[name=index]").first.click()
    expect(page.locator(".messagelist")).to_contain_text("1 miner(s) draining.")
    assert Miner.objects.get(miner_id="drainee").draining

    job = submit_job(make_api("client", "erin"), model="llama3.2")
    response = miner_api.post("/v1/miners/poll", {"max_wait_seconds": 1}, format="json")
    assert response.status_code == 204
    time.sleep(0.5)
    assert Job.objects.get(pk=job["job_id"]).status == JobStatus.QUEUED

    # Undrained, the same miner gets the job at once: the drain was what held it back.
    miner_services.miner_set_draining(miner=Miner.objects.get(miner_id="drainee"), draining=False)
    response = miner_api.post("/v1/miners/poll", {"max_wait_seconds": 1}, format="json")
    assert response.status_code == 200 and response.json()["job_id"] == job["job_id"]


def test_a_jobs_page_never_replaces_its_status_by_an_older_one(page, log_in):
    from tests.factories import JobFactory

    user = get_user_model().objects.create_user(username="ivan", password=PASSWORD)
    job = JobFactory(client=user)  # a model no miner here serves: it stays queued
    sockets = []
    # The job's socket, played by the test: events as processes that changed the job sent them.
    page.route_web_socket(re.compile(r"/ws/jobs/[0-9a-f-]{36}/$"), lambda socket: sockets.append(socket))
    log_in(page, "ivan", PASSWORD)
    page.goto(f"/jobs/{job.pk}/")
    expect(page.locator("#job-live-note")).to_have_text("This page follows the job live.")

    def status(state: str, sequence: int) -> str:
        return json.dumps({"type": "job.status", "job_id": str(job.pk), "status": state, "sequence": sequence})

    sockets[-1].send(status("running", 3))
    expect(page.locator("#job-status")).to_have_text("Running")
    sockets[-1].send(status("queued", 2))  # sent before the claim's, arriving after it
    sockets[-1].send(status("completed", 5))
    expect(page.locator("#job-status")).to_have_text("Completed")
    sockets[-1].send(status("running", 3))
    page.wait_for_timeout(200)
    expect(page.locator("#job-status")).to_have_text("Completed")
