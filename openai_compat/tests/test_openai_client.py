"""The official ``openai`` package, unchanged, against daphne serving the platform: its in-process
workers run the tiny GPT-2 (chat and completions) and the same weights as an embedding model."""

import base64
from decimal import Decimal

import numpy as np
import pytest

from catalog.models import CatalogModel
from inference.testing import TINY
from jobs.models import Job, JobStatus, Receipt
from openai_compat.tests.conftest import TINY_EMBED
from payments.models import PaymentStatus

openai = pytest.importorskip("openai")

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHAT = [{"role": "user", "content": "The coordinator"}]


@pytest.fixture
def platform(serve, tiny_model, tiny_embedding_model):
    CatalogModel.objects.filter(name=TINY).update(price_per_1k_tokens=Decimal("1"))
    return serve(f"{TINY},{TINY_EMBED}")


@pytest.fixture
def client_key(make_api):
    return make_api("client", "openai-user").raw_key


@pytest.fixture
def client(platform, client_key):
    return openai.OpenAI(base_url=f"{platform.url}/v1", api_key=client_key, max_retries=0, timeout=90)


def test_models_lists_the_catalog(client):
    listed = {model.id: model for model in client.models.list()}
    assert set(listed) >= {TINY, TINY_EMBED}
    assert listed[TINY].object == "model"
    assert listed[TINY].owned_by == "aitbc"


def test_chat_completion_is_an_escrowed_receipted_job_named_in_the_headers(client):
    raw = client.chat.completions.with_raw_response.create(
        model=TINY, messages=CHAT, max_tokens=6, temperature=0, user="end-user-7"
    )
    completion = raw.parse()
    job = Job.objects.select_related("payment").get(pk=raw.headers["x-aitbc-job-id"])
    receipt = Receipt.objects.get(job=job)

    assert raw.headers["x-aitbc-receipt-id"] == receipt.pk
    assert completion.id == f"chatcmpl-{job.pk.hex}"
    assert completion.object == "chat.completion"
    assert completion.model == TINY
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == job.result["text"]
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens == job.usage["completion_tokens"] > 0
    assert completion.usage.total_tokens == job.usage["prompt_tokens"] + job.usage["completion_tokens"]
    assert job.status == JobStatus.COMPLETED
    assert job.type == "chat"
    assert job.payload["messages"] == CHAT
    assert job.payload["params"] == {"max_tokens": 6, "temperature": 0}
    assert job.payload["user"] == "end-user-7"
    assert job.payment.status == PaymentStatus.RELEASED


def test_n_choices_run_as_one_job_each(client):
    raw = client.chat.completions.with_raw_response.create(
        model=TINY, messages=CHAT, max_tokens=4, temperature=1, seed=3, n=2
    )
    completion = raw.parse()
    job_ids = raw.headers["x-aitbc-job-id"].split(", ")
    assert [choice.index for choice in completion.choices] == [0, 1]
    assert len(job_ids) == 2
    seeds = [Job.objects.get(pk=job_id).payload["params"]["seed"] for job_id in job_ids]
    assert seeds == [3, 4]
    assert len(raw.headers["x-aitbc-receipt-id"].split(", ")) == 2


def test_chat_stream_sends_the_text_in_order_then_usage_then_done(client):
    stream = client.chat.completions.create(
        model=TINY,
        messages=CHAT,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    job = Job.objects.get(pk=chunks[-1].id.removeprefix("chatcmpl-"))

    assert chunks[0].choices[0].delta.role == "assistant"
    text_chunks = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert "".join(chunk.choices[0].delta.content for chunk in text_chunks) == job.result["text"]
    assert len(text_chunks) > 1, "the text arrived as it was decoded, not in one piece"
    finishing = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert [chunk.choices[0].finish_reason for chunk in finishing] == [job.result["finish_reason"]]
    assert chunks.index(finishing[0]) > chunks.index(text_chunks[-1])
    # The usage chunk comes last, with no choices; every other chunk has usage null.
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == job.usage["completion_tokens"]
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert {chunk.id for chunk in chunks} == {f"chatcmpl-{job.pk.hex}"}


def test_stream_ends_with_done_on_the_wire(platform, client_key):
    import httpx

    body = {"model": TINY, "messages": CHAT, "max_tokens": 5, "temperature": 0, "stream": True}
    headers = {"Authorization": f"Bearer {client_key}"}
    with httpx.stream("POST", f"{platform.url}/v1/chat/completions", json=body, headers=headers, timeout=90) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        job_id = answer.headers["x-aitbc-job-id"]
        lines = [line for line in answer.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    assert Job.objects.get(pk=job_id).status == JobStatus.COMPLETED


def test_completion_and_its_stream(client):
    completion = client.completions.create(model=TINY, prompt="Receipts are", max_tokens=6, temperature=0)
    streamed = list(
        client.completions.create(model=TINY, prompt="Receipts are", max_tokens=6, temperature=0, stream=True)
    )

    assert completion.object == "text_completion"
    assert completion.choices[0].text
    assert "".join(chunk.choices[0].text for chunk in streamed) == completion.choices[0].text
    assert streamed[-1].choices[0].finish_reason == completion.choices[0].finish_reason


def test_embeddings_as_floats_and_as_base64_are_the_same_vectors(client):
    texts = ["a miner", "receipts are signed"]
    as_floats = client.embeddings.create(model=TINY_EMBED, input=texts, encoding_format="float")
    # The official client asks for base64 unless told otherwise, and decodes it.
    as_default = client.embeddings.create(model=TINY_EMBED, input=texts)
    raw = client.embeddings.with_raw_response.create(model=TINY_EMBED, input=texts, encoding_format="base64")
    wire = raw.http_response.json()

    assert [item.index for item in as_floats.data] == [0, 1]
    for floats, decoded in zip(as_floats.data, as_default.data, strict=True):
        assert np.allclose(floats.embedding, decoded.embedding, atol=1e-6)
        assert abs(np.linalg.norm(floats.embedding) - 1) < 1e-4
    vector = np.frombuffer(base64.b64decode(wire["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(vector, as_floats.data[0].embedding, atol=1e-6)
    assert as_floats.usage.total_tokens > 0
    job = Job.objects.get(pk=raw.headers["x-aitbc-job-id"])
    assert job.type == "embedding" and Receipt.objects.filter(job=job).exists()


def test_errors_are_openai_errors(client, platform):
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-17", messages=CHAT)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as invalid:
        client.chat.completions.create(model=TINY, messages=CHAT, temperature=7)
    assert invalid.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as wrong_kind:
        client.embeddings.create(model=TINY, input="hi")
    assert wrong_kind.value.code == "model_not_supported"
    stranger = openai.OpenAI(base_url=f"{platform.url}/v1", api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(model=TINY, messages=CHAT)
