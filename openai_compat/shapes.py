"""OpenAI's requests as the platform's jobs, and the platform's jobs as OpenAI's answers.

A request becomes one job per choice (``n``; for completions, per prompt and choice), each a
job like any other: escrowed, run by a miner, receipted. Its answer is built from the jobs'
stored results, whichever miner produced them.
"""

import base64
import json
import time
from dataclasses import dataclass

import numpy as np
from django.conf import settings

from catalog import payloads
from jobs.models import Job, JobType
from openai_compat.errors import REQUEST_ERRORS, OpenAIError

# OpenAI's "developer" role is its newer name for "system", which chat templates know.
ROLE_ALIASES = {"developer": "system"}
# The roles a message may have (the request's serializer checks): tools are refused
# (``refuse_unsupported``), so their "tool" and "function" messages are too.
ROLES = ("system", "developer", "user", "assistant")
MAX_CHOICES = 8  # the jobs one request may start (n, times the prompts of a completion)


@dataclass(frozen=True)
class JobsRequest:
    """What an OpenAI request asks for, as jobs."""

    kind: str  # "chat.completion", "text_completion" or "embedding"
    model: str
    job_type: str
    payloads: list[dict]
    stream: bool = False
    include_usage: bool = False
    created: int = 0

    @property
    def generates_text(self) -> bool:
        return self.job_type != JobType.EMBEDDING


def chat_request(data: dict) -> JobsRequest:
    messages = [_message(message, index) for index, message in enumerate(data["messages"])]
    payload = {"type": JobType.CHAT, "model": data["model"], "messages": messages, "params": _params(data)}
    return _generation_request("chat.completion", data, [payload])


def completion_request(data: dict) -> JobsRequest:
    prompts = data["prompt"] if isinstance(data["prompt"], list) else [data["prompt"]]
    if not prompts or not all(isinstance(prompt, str) and prompt for prompt in prompts):
        raise OpenAIError("'prompt' must be a non-empty string or a list of them.", param="prompt")
    params = _params(data)
    bodies = [
        {"type": JobType.INFERENCE, "model": data["model"], "prompt": prompt, "params": params} for prompt in prompts
    ]
    return _generation_request("text_completion", data, bodies)


def embedding_request(data: dict) -> JobsRequest:
    texts = data["input"] if isinstance(data["input"], list) else [data["input"]]
    if not texts or not all(isinstance(text, str) and text for text in texts):
        raise OpenAIError(
            "'input' must be a non-empty string or a list of them (token arrays are not accepted).", param="input"
        )
    if data.get("dimensions") is not None:
        raise OpenAIError("'dimensions' is not supported: the model's own size is returned.", param="dimensions")
    payload = {"type": JobType.EMBEDDING, "model": data["model"], "input": texts}
    if data.get("user"):
        payload["user"] = data["user"]
    _check(payload)
    return JobsRequest(kind="embedding", model=data["model"], job_type=JobType.EMBEDDING, payloads=[payload])


def _generation_request(kind: str, data: dict, bodies: list[dict]) -> JobsRequest:
    choices = data.get("n") or 1
    if choices * len(bodies) > MAX_CHOICES:
        raise OpenAIError(f"At most {MAX_CHOICES} choices a request (n times the prompts).", param="n")
    job_payloads = []
    for body in bodies:
        if data.get("user"):
            body["user"] = data["user"]
        _check(body)
        for choice in range(choices):
            payload = json.loads(json.dumps(body))
            seed = payload["params"].get("seed")
            if seed is not None and choice:
                # Each choice samples on its own: the same seed would only repeat the first.
                payload["params"]["seed"] = (seed + choice) % (payloads.MAX_SEED + 1)
            job_payloads.append(payload)
    stream_options = data.get("stream_options") or {}
    return JobsRequest(
        kind=kind, model=data["model"], job_type=bodies[0]["type"], payloads=job_payloads,
        stream=bool(data.get("stream")), include_usage=bool(stream_options.get("include_usage")),
        created=int(time.time()),
    )  # fmt: skip


def refuse_unsupported(data: dict) -> None:
    """Refuse what a request asks for that the platform can't give (fields OpenAI defines that
    would change the answer); the others it does not use are ignored."""
    for name in ("tools", "functions"):
        if data.get(name):
            raise OpenAIError(f"'{name}' is not supported by this server's models.", param=name)
    if data.get("logprobs"):
        raise OpenAIError("'logprobs' is not supported.", param="logprobs")
    response_format = data.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type", "text") != "text":
        raise OpenAIError("Only the text response_format is supported.", param="response_format")
    if data.get("stream_options") and not data.get("stream"):
        raise OpenAIError("'stream_options' is only allowed when 'stream' is true.", param="stream_options")


def _message(message: dict, index: int) -> dict:
    role, content = message.get("role"), message.get("content")
    if not isinstance(role, str) or not role:
        raise OpenAIError("Each message needs a 'role'.", param=f"messages[{index}].role")
    if isinstance(content, list):
        if not all(isinstance(part, dict) and part.get("type") == "text" for part in content):
            raise OpenAIError("Only text content parts are supported.", param=f"messages[{index}].content")
        content = "".join(str(part.get("text", "")) for part in content)
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise OpenAIError("A message's content must be text.", param=f"messages[{index}].content")
    return {"role": ROLE_ALIASES.get(role, role), "content": content}


def _params(data: dict) -> dict:
    params = {}
    max_tokens = data.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = data.get("max_tokens")
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    for name in ("temperature", "top_p", "seed"):
        if data.get(name) is not None:
            params[name] = data[name]
    stop = data.get("stop")
    if stop not in (None, [], ""):
        params["stop"] = stop
    return params


def _check(payload: dict) -> None:
    try:
        payloads.check_payload(payload, max_input_chars=settings.JOB_MAX_INPUT_CHARS)
    except payloads.PayloadError as error:
        param = "max_tokens" if error.field == "max_tokens" else error.field
        raise OpenAIError(error.message, param=param, code=REQUEST_ERRORS.get(error.code)) from None
    if len(json.dumps(payload, ensure_ascii=False).encode()) > settings.JOB_MAX_PAYLOAD_BYTES:
        raise OpenAIError(f"The request is larger than {settings.JOB_MAX_PAYLOAD_BYTES} bytes.", code="too_large")


# --- Answers -----------------------------------------------------------------------------


def response_id(request: JobsRequest, jobs: list[Job]) -> str:
    prefix = {"chat.completion": "chatcmpl", "text_completion": "cmpl"}.get(request.kind, "emb")
    return f"{prefix}-{jobs[0].pk.hex}"


def result_text(result) -> str:
    """The generated text of a job's result: the engine's ``text``, or what other miners name it."""
    if isinstance(result, str):
        return result
    if not isinstance(result, dict):
        return ""
    for key in ("text", "output", "completion", "response", "content"):
        if isinstance(result.get(key), str):
            return result[key]
    message = result.get("message")
    if isinstance(message, dict) and isinstance(message.get("content"), str):
        return message["content"]
    return ""


def finish_reason(result) -> str:
    reason = result.get("finish_reason") if isinstance(result, dict) else None
    return reason if reason in ("stop", "length") else "stop"


def usage(jobs: list[Job]) -> dict:
    counts = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for job in jobs:
        job_usage = job.usage or {}
        for name in counts:
            value = job_usage.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                counts[name] += value
    if not counts["total_tokens"]:
        counts["total_tokens"] = counts["prompt_tokens"] + counts["completion_tokens"]
    return counts


def chat_completion(request: JobsRequest, jobs: list[Job]) -> dict:
    return {
        "id": response_id(request, jobs),
        "object": "chat.completion",
        "created": request.created,
        "model": request.model,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": result_text(job.result), "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason(job.result),
            }
            for index, job in enumerate(jobs)
        ],
        "usage": usage(jobs),
        "system_fingerprint": None,
    }


def text_completion(request: JobsRequest, jobs: list[Job]) -> dict:
    return {
        "id": response_id(request, jobs),
        "object": "text_completion",
        "created": request.created,
        "model": request.model,
        "choices": [
            {
                "index": index,
                "text": result_text(job.result),
                "logprobs": None,
                "finish_reason": finish_reason(job.result),
            }
            for index, job in enumerate(jobs)
        ],
        "usage": usage(jobs),
        "system_fingerprint": None,
    }


def embedding_list(request: JobsRequest, job: Job, *, encoding_format: str) -> dict:
    vectors = _vectors(job.result)
    counts = usage([job])
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": _encoded(vector, encoding_format)}
            for index, vector in enumerate(vectors)
        ],
        "model": request.model,
        "usage": {
            "prompt_tokens": counts["prompt_tokens"] or counts["total_tokens"],
            "total_tokens": counts["total_tokens"],
        },
    }


def _vectors(result) -> list[list[float]]:
    if not isinstance(result, dict):
        return []
    if isinstance(result.get("embeddings"), list):
        return result["embeddings"]
    data = result.get("data")
    if isinstance(data, list):
        return [item.get("embedding", []) for item in data if isinstance(item, dict)]
    return []


def _encoded(vector: list[float], encoding_format: str):
    if encoding_format == "base64":
        # OpenAI's encoding, which its clients decode: the little-endian float32 array, in base64.
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


# --- Stream chunks -----------------------------------------------------------------------


def chunk(request: JobsRequest, stream_id: str, *, index: int, text: str | None = None, first=False, finish=None):
    """One choice's piece of a stream: its first (the role), a delta of text, or its end."""
    base = {"id": stream_id, "created": request.created, "model": request.model}
    if request.kind == "chat.completion":
        delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        body = {**base, "object": "chat.completion.chunk", "choices": [choice], "system_fingerprint": None}
    else:
        choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        body = {**base, "object": "text_completion", "choices": [choice]}
    if request.include_usage:
        body["usage"] = None
    return body


def usage_chunk(request: JobsRequest, stream_id: str, jobs: list[Job]) -> dict:
    body = {"id": stream_id, "created": request.created, "model": request.model, "choices": []}
    if request.kind == "chat.completion":
        body.update(object="chat.completion.chunk", system_fingerprint=None)
    else:
        body["object"] = "text_completion"
    body["usage"] = usage(jobs)
    return body
