import json
import re
import uuid
from decimal import Decimal

import pytest

from jobs.models import Job, JobStatus
from jobs.services import job_submit
from payments.templatetags.credits import credits


def test_submitting_a_prompt_queues_a_job_for_the_catalog_model_and_opens_its_page(browser, alice):
    response = browser.post(
        "/jobs/", {"model": "smollm2-135m", "prompt": "Say hi", "max_tokens": "20", "temperature": "0"}
    )
    job = Job.objects.get(client=alice)
    assert response.status_code == 302
    assert response["Location"] == f"/jobs/{job.pk}/"
    assert job.status == JobStatus.QUEUED
    assert job.payload == {
        "type": "inference",
        "model": "smollm2-135m",
        "prompt": "Say hi",
        "params": {"max_tokens": 20, "temperature": 0.0},
    }
    assert job.price == Decimal("0.00004000"), "0.002 per 1k tokens × 20 tokens, held in escrow"


def test_submitting_to_an_embedding_model_sends_the_text_as_input(browser, alice):
    browser.post("/jobs/", {"model": "minilm-l6", "prompt": "embed me"})
    job = Job.objects.get(client=alice)
    assert (job.type, job.payload) == ("embedding", {"type": "embedding", "model": "minilm-l6", "input": "embed me"})


def test_max_tokens_above_the_models_limit_is_refused_without_a_job(browser, alice):
    response = browser.post("/jobs/", {"model": "smollm2-135m", "prompt": "hi", "max_tokens": "999999"})
    assert response.status_code == 200
    assert response.context["form"].errors["max_tokens"]
    assert not Job.objects.exists()


def test_a_model_outside_the_catalog_cannot_be_picked(browser):
    response = browser.post("/jobs/", {"model": "not-a-model", "prompt": "hi"})
    assert response.context["form"].errors["model"]
    assert not Job.objects.exists()


@pytest.fixture
def no_welcome_credits(settings):
    settings.AITBC_WELCOME_CREDITS = Decimal(0)  # wallets open empty


def test_a_job_the_wallet_cannot_pay_for_shows_the_services_reason(no_welcome_credits, browser):
    response = browser.post("/jobs/", {"model": "smollm2-135m", "prompt": "hi", "max_tokens": "100"})
    assert response.status_code == 200
    assert response.context["form"].non_field_errors()
    assert not Job.objects.exists()


def test_job_list_shows_my_jobs_newest_first(browser, alice, bob, queued_job):
    first, second = queued_job(alice, "one"), queued_job(alice, "two")
    queued_job(bob, "not mine")
    response = browser.get("/jobs/")
    assert list(response.context["page"].object_list) == [second, first]
    assert [m for m, _ in response.context["form"].fields["model"].choices] == ["minilm-l6", "smollm2-135m"]


def test_job_list_is_paginated(browser, alice, queued_job):
    jobs = [queued_job(alice, f"prompt {i}") for i in range(23)]
    second_page = browser.get("/jobs/?page=2")
    assert list(second_page.context["page"].object_list) == jobs[:3][::-1]


def test_job_list_rows_alone_for_the_live_list(browser, alice, bob, queued_job):
    jobs = [queued_job(alice, f"prompt {i}") for i in range(23)]
    theirs = queued_job(bob, "not mine")
    first = browser.get("/jobs/?rows=1")
    assert first.templates[0].name == "jobs/_job_list.html"
    rows = re.findall(r'<tr data-job-id="([0-9a-f-]+)">', first.content.decode())
    assert rows == [str(job.pk) for job in jobs[::-1][:20]]
    assert "<html" not in first.content.decode() and str(theirs.pk) not in first.content.decode()
    second = browser.get("/jobs/?page=2&rows=1")
    assert re.findall(r'<tr data-job-id="([0-9a-f-]+)">', second.content.decode()) == [
        str(j.pk) for j in jobs[:3][::-1]
    ]


def test_job_list_rows_for_a_signed_out_browser_are_refused_not_redirected(client, alice, queued_job, caplog):
    queued_job(alice)
    assert client.get("/jobs/?rows=1").status_code == 403
    assert client.get("/jobs/").status_code == 302
    # A tab left open after signing out asks for its rows at every change: no traceback in the log.
    assert not [record for record in caplog.records if record.exc_info]


def test_job_list_page_is_live_and_says_where_its_rows_come_from(browser, alice, queued_job):
    empty = browser.get("/jobs/").content.decode()
    assert "No jobs yet." in empty
    assert 'data-socket-path="/ws/dashboard/"' in empty and "jobs/jobs.js" in empty
    assert 'data-list-url="/jobs/?rows=1" data-first-page' in empty
    for i in range(21):
        queued_job(alice, f"prompt {i}")
    later = browser.get("/jobs/?page=2").content.decode()
    assert 'data-list-url="/jobs/?page=2&amp;rows=1">' in later


def test_job_list_reads_a_fixed_number_of_queries(browser, alice, finished_job, django_assert_max_num_queries):
    for i in range(12):
        finished_job(alice, f"answer {i}")
    with django_assert_max_num_queries(8):
        response = browser.get("/jobs/")
    assert len(response.context["page"].object_list) == 12


def test_job_page_shows_result_usage_payment_and_receipt(browser, alice, finished_job):
    job = finished_job(alice, "The capital of France is Paris.")
    response = browser.get(f"/jobs/{job.pk}/")
    content = response.content.decode()
    assert response.status_code == 200
    assert "The capital of France is Paris." in content
    assert job.payment_status == "released"
    assert "released" in content
    assert f"{credits(job.amount_charged)} AITBC" in content
    receipt = response.context["receipt"]
    assert receipt["job_id"] == str(job.pk)
    assert json.loads(response.context["receipt_pretty"]) == receipt
    assert 'id="verify-button"' in content
    assert 'data-verify-url="/v1/receipts/verify"' in content
    assert "data-socket-path" not in content, "a finished job has nothing more to stream"


def test_job_page_gives_its_owner_the_opening_that_checks_the_receipt_against_input_and_output(
    browser, alice, finished_job
):
    job = finished_job(alice, "Paris.", prompt="a question only alice asked")
    response = browser.get(f"/jobs/{job.pk}/")
    context = response.context
    bundle = {"receipt": context["receipt"], "opening": context["opening"], **context["contents"]}
    assert bundle["payload"]["prompt"] == "a question only alice asked"
    assert json.loads(context["opening_pretty"]) == context["opening"]
    assert 'id="opening-data"' in response.content.decode()
    assert browser.post("/v1/receipts/verify", bundle, content_type="application/json").json() == {"valid": True}
    guessed = {**bundle, "payload": {**bundle["payload"], "prompt": "a question bob guessed"}}
    answer = browser.post("/v1/receipts/verify", guessed, content_type="application/json").json()
    assert answer == {"valid": False, "reason": "the input does not match the receipt's commitment"}


def test_job_page_of_a_running_job_follows_its_socket(browser, alice, queued_job):
    job = queued_job(alice)
    content = browser.get(f"/jobs/{job.pk}/").content.decode()
    assert f'data-socket-path="/ws/jobs/{job.pk}/"' in content
    assert 'aria-live="polite"' in content


def test_another_users_job_is_not_found(browser, bob, queued_job):
    job = queued_job(bob)
    assert browser.get(f"/jobs/{job.pk}/").status_code == 404
    assert browser.get(f"/jobs/{uuid.uuid4()}/").status_code == 404


def test_the_receipt_shown_verifies_through_the_api(browser, alice, finished_job):
    job = finished_job(alice)
    receipt = browser.get(f"/jobs/{job.pk}/").context["receipt"]
    answer = browser.post("/v1/receipts/verify", receipt, content_type="application/json")
    assert answer.json() == {"valid": True}
    tampered = {**receipt, "units": 1_000_000}
    assert browser.post("/v1/receipts/verify", tampered, content_type="application/json").json()["valid"] is False


def test_job_page_shows_the_prompt_it_was_asked(browser, alice, queued_job):
    job = queued_job(alice, "Why is the sky <b>blue</b>?")
    content = browser.get(f"/jobs/{job.pk}/").content.decode()
    assert 'id="request-heading">Request</h2>' in content
    assert "Why is the sky &lt;b&gt;blue&lt;/b&gt;?</pre>" in content


def test_job_page_shows_a_chats_messages_with_their_roles(browser, alice):
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Capital of Peru?"}]
    payload = {"type": "chat", "model": "smollm2-135m", "messages": messages, "params": {"max_tokens": 8}}
    job = job_submit(client=alice, model="smollm2-135m", job_type="chat", payload=payload).job
    response = browser.get(f"/jobs/{job.pk}/")
    assert response.context["job_request"]["messages"] == messages
    content = response.content.decode()
    assert re.search(
        r"system</span><pre[^>]*>Answer briefly\.</pre>.*user</span><pre[^>]*>Capital of Peru\?</pre>", content, re.S
    )
    # With the catalog model's default parameters it did not set.
    assert "{&quot;max_tokens&quot;: 8, &quot;temperature&quot;: 0}" in content


def test_job_page_shows_the_texts_an_embedding_job_was_given(browser, alice):
    payload = {"type": "embedding", "model": "minilm-l6", "input": ["first text", "second text"]}
    job = job_submit(client=alice, model="minilm-l6", job_type="embedding", payload=payload).job
    content = browser.get(f"/jobs/{job.pk}/").content.decode()
    assert re.search(r'id="job-inputs".*first text.*second text', content, re.S)


def test_submit_form_defaults_to_a_chat_model_not_the_embedding_one(browser):
    response = browser.get("/jobs/")
    assert response.context["form"]["model"].value() == "smollm2-135m"
    assert '<option value="smollm2-135m" selected>' in response.content.decode()


def test_a_prompt_sent_as_the_form_comes_runs_with_the_models_default_parameters(browser, alice):
    form = browser.get("/jobs/").context["form"]
    assert form["temperature"].value() is None, "the form offers no temperature of its own"

    browser.post("/jobs/", {"model": "smollm2-135m", "prompt": "What is the capital of France?", "temperature": ""})

    job = Job.objects.get(client=alice)
    assert job.payload["params"]["temperature"] == 0, "the catalog's default: SmolLM2 answers greedily"


def test_model_labels_and_the_job_page_nest_no_parentheses(browser, alice, queued_job):
    labels = [label for _, label in browser.get("/jobs/").context["form"].fields["model"].choices]
    assert labels == ["minilm-l6 — embedding, 0 miners online", "smollm2-135m — chat, 0 miners online"]
    content = browser.get(f"/jobs/{queued_job(alice).pk}/").content.decode()
    assert not re.search(r"\([^()]*\(", content), "a parenthesis opened inside another"
    assert "<dt>Type</dt><dd>Inference (text generation)</dd>" in content
