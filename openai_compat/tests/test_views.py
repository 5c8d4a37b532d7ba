"""The OpenAI-compatible routes in process: jobs made of requests, waits, timeouts and errors."""

import asyncio
import json
import threading
import time
from decimal import Decimal

import pytest
from django.db import connection

from catalog.models import CatalogModel
from jobs import events
from jobs.models import Job, JobStatus
from jobs.services import StreamedText, job_claim, job_complete, job_tokens_relay
from miners.models import Miner
from payments.models import PaymentStatus

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


@pytest.fixture(autouse=True)
def quick(settings):
    settings.RATE_LIMITS_ENABLED = False
    settings.OPENAI_QUEUE_TIMEOUT_SECONDS = 10


@pytest.fixture
def miner(miner_api, register_miner):
    register_miner(miner_api, models=("llama3.2",), max_concurrent_jobs=4)
    return Miner.objects.get(miner_id="miner-1")


def post(api, path, body):
    return api.post(path, json.dumps(body), content_type="application/json")


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"message", "type", "param", "code"} <= set(body["error"])
    return body["error"]


def run_miner(miner, *, result: dict, pieces=(), usage=None):
    """A miner in a thread: claims the next job, streams ``pieces`` of it, then reports ``result``."""

    def work():
        try:
            for _ in range(200):
                jobs = job_claim(miner=miner)
                if jobs:
                    break
                time.sleep(0.05)
            job = jobs[0]
            if pieces:
                job_tokens_relay(
                    miner=miner,
                    pieces=[
                        StreamedText(job_id=str(job.pk), index=index, text=text, lease_token=job.lease_token)
                        for index, text in enumerate(pieces)
                    ],
                )
            metrics = usage or {"prompt_tokens": 3, "completion_tokens": len(pieces) or 2}
            job_complete(job_id=job.pk, miner=miner, result=result, metrics=metrics, lease_token=job.lease_token)
        finally:
            connection.close()

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def test_a_chat_request_is_a_job_answered_with_its_result_and_receipt(client_api, miner):
    worker = run_miner(miner, result={"text": "hello there", "finish_reason": "stop"})
    answer = post(client_api, "/v1/chat/completions", {**CHAT, "temperature": 0, "stop": ["\n"], "seed": 5})
    worker.join(timeout=10)

    assert answer.status_code == 200, answer.content
    job = Job.objects.get(pk=answer["X-AITBC-Job-Id"])
    assert answer["X-AITBC-Receipt-Id"] == job.receipts.get().pk
    assert job.payload == {
        "type": "chat",
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "hi"}],
        "params": {"max_tokens": 8, "temperature": 0, "seed": 5, "stop": ["\n"]},
    }
    body = answer.json()
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hello there", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_a_stream_carries_what_the_miner_streamed_then_the_rest_of_its_result(client_api, miner):
    worker = run_miner(miner, result={"text": "one two three", "finish_reason": "length"}, pieces=["one", " two"])
    answer = post(
        client_api, "/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    )
    worker.join(timeout=10)

    assert answer.status_code == 200, answer.content
    assert answer["Content-Type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in answer.content.decode().split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks if chunk["choices"])
    assert text == "one two three"
    finish = [chunk for chunk in chunks if chunk["choices"] and chunk["choices"][0]["finish_reason"]]
    assert [chunk["choices"][0]["finish_reason"] for chunk in finish] == ["length"]
    assert finish[0]["receipt_id"] == Job.objects.get(pk=answer["X-AITBC-Job-Id"]).receipts.get().pk
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2


def test_a_request_no_miner_takes_in_time_answers_504_with_the_job_which_stays_queued(client_api, miner, settings):
    settings.OPENAI_QUEUE_TIMEOUT_SECONDS = 0
    answer = post(client_api, "/v1/chat/completions", CHAT)

    assert answer.status_code == 504
    error = error_of(answer)
    assert (error["type"], error["code"]) == ("timeout", "job_pending")
    [job_id] = error["job_ids"]
    assert answer["X-AITBC-Job-Id"] == job_id
    assert answer["X-Should-Retry"] == "false"
    assert Job.objects.get(pk=job_id).status == JobStatus.QUEUED


def test_a_stream_no_miner_takes_in_time_is_the_same_504(client_api, miner, settings):
    settings.OPENAI_QUEUE_TIMEOUT_SECONDS = 0
    answer = post(client_api, "/v1/chat/completions", {**CHAT, "stream": True})
    assert answer.status_code == 504
    assert error_of(answer)["job_ids"] == [answer["X-AITBC-Job-Id"]]


def test_a_failed_job_answers_its_error(client_api, miner):
    worker = run_miner(miner, result={"status": "failed", "error_code": "INPUT_TOO_LONG", "error": "Too many tokens."})
    answer = post(client_api, "/v1/chat/completions", CHAT)
    worker.join(timeout=10)
    assert answer.status_code == 400
    assert error_of(answer)["code"] == "context_length_exceeded"


def test_an_unknown_model_is_404_model_not_found(client_api):
    answer = post(client_api, "/v1/chat/completions", {**CHAT, "model": "gpt-17"})
    assert answer.status_code == 404
    assert error_of(answer) == {
        "message": "The model `gpt-17` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert not Job.objects.exists()


def test_a_disabled_catalog_model_is_not_found(client_api):
    CatalogModel.objects.create(name="retired", task="chat", source_kind="hub", source="x/y", enabled=False)
    assert post(client_api, "/v1/completions", {"model": "retired", "prompt": "hi"}).status_code == 404


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "x"}]}, "messages.1.role"),
        ({"messages": [{"role": "tool", "content": "42"}]}, "messages.0.role"),
        ({"n": 9}, "n"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"top_p": 0}, "top_p"),
    ],
)
def test_an_invalid_parameter_is_400_naming_it(client_api, miner, change, param):
    answer = post(client_api, "/v1/chat/completions", {**CHAT, **change})
    assert answer.status_code == 400, answer.content
    error = error_of(answer)
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


def test_malformed_json_is_400(client_api):
    answer = client_api.post("/v1/chat/completions", "{not json", content_type="application/json")
    assert answer.status_code == 400
    assert error_of(answer)["code"] == "invalid_json"


def test_a_generation_model_refuses_embeddings(client_api):
    CatalogModel.objects.create(name="chatty", task="chat", source_kind="hub", source="x/y")
    answer = post(client_api, "/v1/embeddings", {"model": "chatty", "input": "hi"})
    assert answer.status_code == 400
    assert error_of(answer)["code"] == "model_not_supported"
    assert error_of(answer)["message"].startswith("The model `chatty` is a chat model")


def test_an_embedding_model_refuses_chat(client_api):
    CatalogModel.objects.create(name="vectors", task="embedding", source_kind="hub", source="x/y")
    answer = post(
        client_api, "/v1/chat/completions", {"model": "vectors", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert answer.status_code == 400
    assert error_of(answer)["code"] == "model_not_supported"
    assert error_of(answer)["message"].startswith("The model `vectors` is an embedding model")


def test_a_short_wallet_is_429_insufficient_quota_and_queues_nothing(client_api):
    CatalogModel.objects.create(
        name="dear", task="chat", source_kind="hub", source="x/y", price_per_1k_tokens=Decimal("1000000")
    )
    answer = post(client_api, "/v1/chat/completions", {**CHAT, "model": "dear"})
    assert answer.status_code == 429
    assert error_of(answer)["type"] == "insufficient_quota"
    assert answer["X-Should-Retry"] == "false"
    assert not Job.objects.exists()


def test_a_priced_request_holds_its_escrow_while_it_waits(client_api, miner, settings):
    settings.OPENAI_QUEUE_TIMEOUT_SECONDS = 0
    CatalogModel.objects.create(name="priced", task="chat", source_kind="hub", source="x/y", price_per_1k_tokens=1)
    answer = post(client_api, "/v1/chat/completions", {**CHAT, "model": "priced", "n": 2})
    assert answer.status_code == 504
    jobs = Job.objects.filter(pk__in=error_of(answer)["job_ids"]).select_related("payment")
    assert [job.payment.status for job in jobs] == [PaymentStatus.ESCROWED] * 2


@pytest.mark.parametrize(("caller", "status"), [("anonymous", 401), ("miner", 403)])
def test_callers_without_a_client_key_get_openai_errors(client, miner_api, caller, status):
    api = client if caller == "anonymous" else miner_api
    answer = post(api, "/v1/chat/completions", CHAT)
    assert answer.status_code == status
    error_of(answer)


@pytest.mark.parametrize("body", ["{not json", json.dumps({**CHAT, "temperature": 5})])
@pytest.mark.parametrize(("caller", "status"), [("anonymous", 401), ("miner", 403)])
def test_a_caller_without_a_client_key_is_refused_before_its_body_is(client, miner_api, caller, status, body):
    api = client if caller == "anonymous" else miner_api
    answer = api.post("/v1/chat/completions", body, content_type="application/json")
    assert answer.status_code == status
    assert error_of(answer)["code"] in ("invalid_api_key", "permission_denied")


def test_authentication_and_the_submit_take_one_hop_to_a_thread(client_api, miner, monkeypatch):
    from openai_compat.api import views

    hops = []

    async def counted(function, /, **kwargs):
        hops.append(function.__name__)
        return await in_thread(function, **kwargs)

    in_thread = views.in_thread
    monkeypatch.setattr(views, "in_thread", counted)
    answer = post(client_api, "/v1/chat/completions", {**CHAT, "model": "gpt-17"})
    assert answer.status_code == 404
    assert hops == ["_checked_submit"]


def test_the_jobs_are_queued_once_their_watch_joined_their_groups(client_api, monkeypatch):
    from channels.layers import InMemoryChannelLayer

    from openai_compat import streams
    from openai_compat.api import views

    class SlowLayer(InMemoryChannelLayer):
        async def group_add(self, group, channel):
            await asyncio.sleep(0.3)
            await super().group_add(group, channel)

    layer = SlowLayer()
    monkeypatch.setattr(streams, "get_channel_layer", lambda: layer)
    members_at_submit = []

    def submit(**kwargs):
        groups = [events.job_group(job_id) for job_id in kwargs["job_ids"]]
        members_at_submit.extend(len(layer.groups.get(group, {})) for group in groups)
        return request_jobs_submit(**kwargs)

    request_jobs_submit = views.services.request_jobs_submit
    monkeypatch.setattr(views.services, "request_jobs_submit", submit)
    # Another process's miner takes the jobs once they are committed: its events reach members only.
    answer = post(client_api, "/v1/chat/completions", {**CHAT, "model": "gpt-17", "n": 2})
    assert answer.status_code == 404
    assert members_at_submit == [1, 1]
