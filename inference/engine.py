"""The transformers inference engine: load a model once, validate job payloads, run them micro-batched.

Plain Python, no Django: the in-cluster Dramatiq worker and the external HTTP miner agent both use it.
Importing this module imports torch and transformers (~1.5 s, ~300 MB), so import it where inference
runs, not in modules every web process loads.

Generation runs every item of a call as one batched ``model.generate``. Items differ in their
parameters, so generation itself is greedy and three hooks make each row behave as its own job:
``_RowSampler`` draws sampled rows' tokens with their own seeded generators, ``_RowStopper`` ends
each row at its EOS, stop string or max_tokens, and ``_TokenStreamer`` publishes each step's new text.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from inference.params import generation_params

logger = logging.getLogger(__name__)

TASKS = ("text-generation", "chat", "embedding")
SOURCE_KINDS = ("directory", "package", "hub")
GENERATION_TASKS = frozenset({"text-generation", "chat"})
# Job payload "type" → whether it asks for embeddings.
PAYLOAD_TYPES = {"inference": False, "chat": False, "embedding": True}

DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 1.0
MAX_TEMPERATURE = 2.0
MAX_STOP_STRINGS = 4
MAX_SEED = 2**63 - 1
EMBEDDING_CHUNK = 32
# Written last into a converted GGUF cache: names the GGUF it came from, so a changed source is reconverted.
CACHE_SOURCE_FILE = "gguf-source.json"
# A tokenizer's model_max_length at or above this is transformers' "no limit" placeholder.
NO_TOKENIZER_LIMIT = 10**8


class InferenceError(Exception):
    """A job this engine cannot run, with a machine-readable code for the job's error."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str
    source_kind: str
    source: str
    default_max_tokens: int = 256
    max_tokens: int = 2048

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if self.source_kind not in SOURCE_KINDS:
            raise ValueError(f"source_kind must be one of {', '.join(SOURCE_KINDS)}, not {self.source_kind!r}")

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        known = {spec_field.name for spec_field in fields(cls)}
        return cls(**{name: value for name, value in data.items() if name in known})


@dataclass(frozen=True)
class TokenEvent:
    """One streamed piece of one job's output."""

    key: str
    index: int
    text: str
    completion_tokens: int
    max_tokens: int


@dataclass
class Answer:
    key: str
    result: dict | None
    metrics: dict
    error: InferenceError | None = None


@dataclass(eq=False)
class LoadedModel:
    spec: ModelSpec
    model: Any
    tokenizer: Any
    device: str
    dtype: torch.dtype
    context_length: int
    eos_token_ids: frozenset[int]
    # One batch at a time per model: two concurrent generate calls would only fight over the same cores or GPU.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id


# --- loading ------------------------------------------------------------------------------

_models: dict[str, LoadedModel] = {}
_load_locks: dict[str, threading.Lock] = {}
_registry_lock = threading.Lock()


def load(spec: ModelSpec, *, cache_dir: Path | None = None, device: str | None = None) -> LoadedModel:
    """The model named ``spec.name``, loaded on the first call in this process; later calls return it
    (whatever their ``device``). Concurrent first callers wait for one load. Raises MODEL_NOT_LOADED."""
    with _registry_lock:
        if spec.name in _models:
            return _models[spec.name]
        name_lock = _load_locks.setdefault(spec.name, threading.Lock())
    with name_lock:
        if spec.name not in _models:
            loaded = _load(spec, cache_dir=None if cache_dir is None else Path(cache_dir), device=device)
            with _registry_lock:
                _models[spec.name] = loaded
        return _models[spec.name]


def loaded_models() -> list[str]:
    with _registry_lock:
        return sorted(_models)


def _load(spec: ModelSpec, *, cache_dir: Path | None, device: str | None) -> LoadedModel:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model_class = AutoModel if spec.task == "embedding" else AutoModelForCausalLM
    started = time.perf_counter()
    try:
        location, gguf_file = _resolve_source(spec)
        if gguf_file is not None and cache_dir is not None:
            location, gguf_file = _converted_gguf(spec, Path(location), gguf_file, cache_dir, model_class), None
        options = {"gguf_file": gguf_file} if gguf_file else {}
        if spec.source_kind == "hub" and cache_dir is not None:
            options["cache_dir"] = str(cache_dir / "hub")
        tokenizer = AutoTokenizer.from_pretrained(location, **options)
        model = model_class.from_pretrained(location, dtype=dtype, **options).to(device).eval()
    except InferenceError:
        raise
    except Exception as exc:
        raise InferenceError(
            "MODEL_NOT_LOADED", f"{spec.name} could not be loaded from {spec.source}: {_describe(exc)}"
        ) from exc

    eos_token_ids = _eos_token_ids(model, tokenizer)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise InferenceError("MODEL_NOT_LOADED", f"{spec.name}'s tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    logger.info("loaded %s on %s (%s) in %.1f s", spec.name, device, dtype, time.perf_counter() - started)
    return LoadedModel(
        spec=spec,
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        context_length=_context_length(model.config, tokenizer),
        eos_token_ids=eos_token_ids,
    )


def _resolve_source(spec: ModelSpec) -> tuple[str | Path, str | None]:
    """(what from_pretrained loads, the GGUF file name inside it or None)."""
    if spec.source_kind == "hub":
        return spec.source, None
    if spec.source_kind == "package":
        # find_spec locates a top-level package without importing it (weight packages may import missing things).
        found = importlib.util.find_spec(spec.source)
        if found is None or not found.submodule_search_locations:
            raise InferenceError("MODEL_NOT_LOADED", f"the package {spec.source!r} is not installed")
        directory = Path(found.submodule_search_locations[0])
        if (directory / "model" / "config.json").is_file():
            directory = directory / "model"
    else:
        directory = Path(spec.source)
    if (directory / "config.json").is_file():
        return directory, None
    gguf_files = sorted(directory.glob("*.gguf"))
    if len(gguf_files) == 1:
        return directory, gguf_files[0].name
    raise InferenceError("MODEL_NOT_LOADED", f"{directory} holds neither a config.json nor exactly one .gguf file")


def _converted_gguf(spec: ModelSpec, directory: Path, gguf_file: str, cache_dir: Path, model_class) -> Path:
    """``cache_dir/<name>``: the GGUF model dequantized into safetensors, converted on first use.

    The conversion is written to a staging directory and renamed into place, so a crash never
    leaves a half-written cache, and a concurrent converter's finished copy is used as it is.
    """
    target = cache_dir / spec.name
    source = {"gguf_file": gguf_file, "bytes": (directory / gguf_file).stat().st_size}
    if _cache_matches(target, source):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=cache_dir))
    try:
        started = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
        model = model_class.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
        # The weights are already dequantized; transformers only refuses to save while it still
        # believes the model is GGUF-quantized.
        model.hf_quantizer = None
        del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / CACHE_SOURCE_FILE).write_text(json.dumps(source))
        del model
        if not _cache_matches(target, source):
            shutil.rmtree(target, ignore_errors=True)  # converted from another GGUF file
            try:
                staging.rename(target)
            except OSError:
                if not _cache_matches(target, source):  # else a concurrent converter got there first
                    raise
        logger.info("converted %s to safetensors in %s in %.1f s", gguf_file, target, time.perf_counter() - started)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _cache_matches(target: Path, source: dict) -> bool:
    try:
        return json.loads((target / CACHE_SOURCE_FILE).read_text()) == source
    except (OSError, ValueError):
        return False


def _eos_token_ids(model, tokenizer) -> frozenset[int]:
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    return frozenset(token for token in ids if token is not None)


def _context_length(config, tokenizer) -> int:
    """Tokens the model can attend to: its position table, or failing that the tokenizer's limit."""
    limits = [getattr(config, "max_position_embeddings", None), getattr(config, "n_positions", None)]
    limits.append(tokenizer.model_max_length if tokenizer.model_max_length < NO_TOKENIZER_LIMIT else None)
    known = [limit for limit in limits if isinstance(limit, int) and limit > 0]
    if not known:
        raise InferenceError("MODEL_NOT_LOADED", "the model's context length is unknown")
    return min(known)


def use_threads(count: int) -> None:
    """Run CPU inference on ``count`` threads (0 keeps torch's default, one per core). Processes
    sharing the cores should split them: oversubscribed, generation slows down tenfold."""
    if count > 0:
        torch.set_num_threads(count)


def gpu_info() -> dict:
    if not torch.cuda.is_available():
        total_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return {"gpu_name": "cpu", "memory_mb": total_bytes // 2**20}
    free_bytes, total_bytes = torch.cuda.mem_get_info()
    try:
        utilization = torch.cuda.utilization()
    except Exception:  # needs NVML (pynvml), which not every host has
        utilization = None
    return {
        "gpu_name": torch.cuda.get_device_name(),
        "memory_mb": total_bytes // 2**20,
        "memory_used_mb": (total_bytes - free_bytes) // 2**20,
        "utilization": utilization,
    }


# --- executing jobs -----------------------------------------------------------------------


@dataclass(eq=False)
class _Request:
    """One validated job. Its stream position outlives a batch attempt, so a retry after an
    out-of-memory split never re-sends text the caller already has."""

    position: int
    key: str
    input_ids: list[list[int]]  # one prompt for generation; one entry per text for embeddings
    max_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0
    chat: bool = False
    streamed_chars: int = 0
    next_index: int = 0

    @property
    def prompt_tokens(self) -> int:
        return sum(len(ids) for ids in self.input_ids)


def execute(
    model: LoadedModel,
    items: list[tuple[str, dict]],
    *,
    on_tokens: Callable[[list[TokenEvent]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[Answer]:
    """Run ``items`` ((key, job payload) pairs) as one batch and return one Answer per item, in order.

    Never raises for a bad item: its Answer carries the error and the others still run.
    ``on_tokens`` gets each decoding step's new text for all streaming rows at once (steps that
    add no visible text are skipped); its exceptions are logged and ignored. ``should_stop()``
    returning True ends generation: unfinished items get MINER_SHUTDOWN.
    """
    answers: dict[int, Answer] = {}
    with model.lock:
        requests = []
        for position, (key, payload) in enumerate(items):
            try:
                requests.append(_validate(model, position, str(key), payload))
            except InferenceError as error:
                answers[position] = _failure(str(key), error)
        if requests:
            if model.spec.task == "embedding":
                run = partial(_embed, model)
            else:
                run = partial(_generate, model, on_tokens=on_tokens, should_stop=should_stop)
            for request, answer in zip(requests, _run_splitting_on_oom(model, requests, run, should_stop), strict=True):
                answers[request.position] = answer
    return [answers[position] for position in range(len(items))]


def _run_splitting_on_oom(model, requests, run, should_stop) -> list[Answer]:
    if should_stop is not None and should_stop():
        return [_failure(r.key, _shutdown_error()) for r in requests]
    started = time.perf_counter()
    try:
        return run(requests)
    except Exception as exc:
        if not _is_out_of_memory(exc):
            logger.warning("inference on %s failed", model.spec.name, exc_info=True)
            error = InferenceError("INFERENCE_FAILED", _describe(exc))
            return [_failure(r.key, error, _elapsed_ms(started)) for r in requests]
    # Retry outside the except block: its traceback still holds the failed batch's tensors.
    _release_cuda_memory()
    if len(requests) == 1:
        error = InferenceError("OUT_OF_MEMORY", f"{model.spec.name} ran out of memory on this job even alone")
        return [_failure(requests[0].key, error, _elapsed_ms(started))]
    half = len(requests) // 2
    logger.warning("%s ran out of memory on a batch of %d; retrying in halves", model.spec.name, len(requests))
    return _run_splitting_on_oom(model, requests[:half], run, should_stop) + _run_splitting_on_oom(
        model, requests[half:], run, should_stop
    )


def _is_out_of_memory(exc: Exception) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


def _release_cuda_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _shutdown_error() -> InferenceError:
    return InferenceError("MINER_SHUTDOWN", "stopped before the job finished: the miner is shutting down")


def _failure(key: str, error: InferenceError, compute_ms: float = 0.0) -> Answer:
    """An error's metrics count no tokens and no units: nothing is delivered to be paid for."""
    return Answer(key=key, result=None, metrics=_metrics(0, 0, compute_ms, units=0), error=error)


def _metrics(prompt_tokens: int, completion_tokens: int, compute_ms: float, *, units: int | None = None) -> dict:
    total = prompt_tokens + completion_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": total,
        "compute_ms": round(compute_ms, 2),
        "units": total if units is None else units,
        "unit_type": "tokens",
    }


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _describe(exc: BaseException) -> str:
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first_line}"[:300]


# --- validation ---------------------------------------------------------------------------


def _validate(model: LoadedModel, position: int, key: str, payload) -> _Request:
    if not isinstance(payload, dict):
        raise InferenceError("INVALID_PAYLOAD", "the job payload must be a JSON object")
    payload_type = payload.get("type")
    if payload_type is not None and payload_type not in PAYLOAD_TYPES:
        raise InferenceError("INVALID_PAYLOAD", f"type must be one of {', '.join(PAYLOAD_TYPES)}, not {payload_type!r}")
    is_embedding_model = model.spec.task == "embedding"
    if payload_type is not None and PAYLOAD_TYPES[payload_type] != is_embedding_model:
        raise InferenceError(
            "UNSUPPORTED_TASK", f"{model.spec.name} is a {model.spec.task} model; it cannot run {payload_type} jobs"
        )
    if is_embedding_model:
        return _validate_embedding(model, position, key, payload)
    return _validate_generation(model, position, key, payload, chat=payload_type == "chat")


def _validate_generation(model: LoadedModel, position: int, key: str, payload: dict, *, chat: bool) -> _Request:
    params = _params(payload)
    messages, prompt = payload.get("messages"), payload.get("prompt")
    if messages is not None:
        text, templated = _apply_chat_template(model, _checked_messages(messages)), True
    elif prompt is not None:
        if not isinstance(prompt, str) or not prompt:
            raise InferenceError("INVALID_PAYLOAD", "prompt must be a non-empty string")
        templated = model.spec.task == "chat" and bool(model.tokenizer.chat_template)
        text = _apply_chat_template(model, [{"role": "user", "content": prompt}]) if templated else prompt
    else:
        raise InferenceError("INVALID_PAYLOAD", "a generation job needs a prompt or messages")
    # A chat template already carries the model's special tokens; a raw prompt gets the usual BOS.
    prompt_ids = model.tokenizer(text, add_special_tokens=not templated)["input_ids"]
    if not prompt_ids:
        raise InferenceError("INVALID_PAYLOAD", "the prompt encodes to no tokens")

    room = model.context_length - len(prompt_ids)
    max_tokens = _int_param(params, "max_tokens", 1, model.spec.max_tokens)
    if max_tokens is None:
        max_tokens = min(model.spec.default_max_tokens, model.spec.max_tokens, room)
        if max_tokens < 1:
            raise InferenceError(
                "INPUT_TOO_LONG",
                f"the prompt is {len(prompt_ids)} tokens; {model.spec.name} reads at most "
                f"{model.context_length - 1} tokens to leave room for an answer",
            )
    elif max_tokens > room:
        raise InferenceError(
            "INPUT_TOO_LONG",
            f"the prompt is {len(prompt_ids)} tokens and max_tokens is {max_tokens}: together "
            f"{len(prompt_ids) + max_tokens}, more than the {model.context_length} tokens {model.spec.name} can attend to",
        )
    temperature = _number_param(params, "temperature", DEFAULT_TEMPERATURE)
    if not 0 <= temperature <= MAX_TEMPERATURE:
        raise InferenceError("INVALID_PARAMS", f"temperature must be between 0 and {MAX_TEMPERATURE}")
    top_p = _number_param(params, "top_p", DEFAULT_TOP_P)
    if not 0 < top_p <= 1:
        raise InferenceError("INVALID_PARAMS", "top_p must be greater than 0 and at most 1")
    seed = _int_param(params, "seed", 0, MAX_SEED)
    return _Request(
        position=position,
        key=key,
        input_ids=[prompt_ids],
        max_tokens=max_tokens,
        temperature=float(temperature),
        top_p=float(top_p),
        stop=_stop_strings(params),
        # A drawn seed is fixed here so that a retried half of an out-of-memory batch repeats its tokens.
        seed=secrets.randbelow(MAX_SEED + 1) if seed is None else seed,
        chat=chat or templated,
    )


def _validate_embedding(model: LoadedModel, position: int, key: str, payload: dict) -> _Request:
    texts = payload.get("input", payload.get("prompt"))
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) and text for text in texts):
        raise InferenceError("INVALID_PAYLOAD", "input must be a non-empty string or a non-empty list of them")
    input_ids = [model.tokenizer(text)["input_ids"] for text in texts]
    for index, ids in enumerate(input_ids):
        if len(ids) > model.context_length:
            raise InferenceError(
                "INPUT_TOO_LONG",
                f"input {index} is {len(ids)} tokens; {model.spec.name} embeds at most {model.context_length}",
            )
    return _Request(position=position, key=key, input_ids=input_ids)


def _params(payload: dict) -> dict:
    try:
        return generation_params(payload)
    except ValueError as error:
        raise InferenceError("INVALID_PAYLOAD", str(error)) from None


def _int_param(params: dict, name: str, low: int, high: int) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InferenceError("INVALID_PARAMS", f"{name} must be an integer from {low} to {high}")
    return value


def _number_param(params: dict, name: str, default: float) -> float:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InferenceError("INVALID_PARAMS", f"{name} must be a number")
    return value


def _stop_strings(params: dict) -> tuple[str, ...]:
    stop = params.get("stop", [])
    if isinstance(stop, str):
        stop = [stop]
    if (
        not isinstance(stop, list)
        or len(stop) > MAX_STOP_STRINGS
        or not all(isinstance(text, str) and text for text in stop)
    ):
        raise InferenceError(
            "INVALID_PARAMS", f"stop must be a non-empty string or a list of at most {MAX_STOP_STRINGS}"
        )
    return tuple(stop)


def _checked_messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise InferenceError("INVALID_PAYLOAD", "messages must be a non-empty list")
    for message in messages:
        if not (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise InferenceError("INVALID_PAYLOAD", 'each message must be {"role": string, "content": string}')
    return [{"role": message["role"], "content": message["content"]} for message in messages]


def _apply_chat_template(model: LoadedModel, messages: list[dict]) -> str:
    if not model.tokenizer.chat_template:
        raise InferenceError("UNSUPPORTED_TASK", f"{model.spec.name} has no chat template; send a prompt instead")
    try:
        return model.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # the template itself rejects the conversation (e.g. roles out of order)
        raise InferenceError("INVALID_PAYLOAD", f"the chat template rejected these messages: {_describe(exc)}") from exc


# --- generation ---------------------------------------------------------------------------


def _printable(text: str) -> str:
    # Byte-level tokenizers can produce NUL, which JSON stores (PostgreSQL's jsonb) refuse.
    return text.replace("\x00", "")


class _Row:
    """One request's sequence inside a generation batch."""

    def __init__(self, request: _Request, model: LoadedModel):
        self.request = request
        self.tokens: list[int] = []
        self.text = ""
        self._prefix_offset = self._read_offset = 0
        self.finish_reason: str | None = None
        self._model = model
        self._generator = None
        if request.temperature > 0:
            self._generator = torch.Generator(device=model.device).manual_seed(request.seed)

    @property
    def samples(self) -> bool:
        return self._generator is not None and self.finish_reason is None

    def draw(self, logits: torch.Tensor) -> int:
        """A token drawn from ``logits`` at this row's temperature and top_p, with its own generator."""
        probs = torch.softmax(logits / self.request.temperature, dim=-1)
        if self.request.top_p < 1:
            sorted_probs, order = probs.sort(descending=True)
            # Keep the smallest set of most likely tokens whose mass reaches top_p (always at least one).
            sorted_probs[sorted_probs.cumsum(dim=-1) - sorted_probs > self.request.top_p] = 0
            return int(order[torch.multinomial(sorted_probs, 1, generator=self._generator)])
        return int(torch.multinomial(probs, 1, generator=self._generator))

    def append(self, token: int, *, decode: bool) -> None:
        """Take this step's token and decide whether the row is finished. ``text`` is decoded at the
        end, or token by token when ``decode`` (streaming) or stop strings need it."""
        self.tokens.append(token)
        ended_by_eos = token in self._model.eos_token_ids
        at_limit = len(self.tokens) >= self.request.max_tokens
        content_end = len(self.tokens) - 1 if ended_by_eos else len(self.tokens)
        if decode or self.request.stop:
            self._decode_increment(content_end, final=ended_by_eos or at_limit)
        elif ended_by_eos or at_limit:
            self.text = _printable(self._model.tokenizer.decode(self.tokens[:content_end], skip_special_tokens=True))
        if ended_by_eos:
            self.finish_reason = "stop"
            return
        stops_found = [index for index in (self.text.find(stop) for stop in self.request.stop) if index >= 0]
        if stops_found:
            self.text = self.text[: min(stops_found)]
            self.finish_reason = "stop"
        elif at_limit:
            self.finish_reason = "length"

    def _decode_increment(self, end: int, *, final: bool) -> None:
        """Add the text of the tokens up to ``end`` not yet decoded, decoding only a short window:
        the tokens since the last complete piece, with the piece before for context (byte-level
        tokenizers split characters across tokens). Decoding everything at every step would cost
        quadratic time in long generations."""
        decode = self._model.tokenizer.decode
        before = decode(self.tokens[self._prefix_offset : self._read_offset], skip_special_tokens=True)
        current = decode(self.tokens[self._prefix_offset : end], skip_special_tokens=True)
        if len(current) > len(before) and (final or not current.endswith("\ufffd")):
            self.text += _printable(current[len(before) :])
            self._prefix_offset, self._read_offset = self._read_offset, end

    def visible_text(self) -> str:
        """The text that can be streamed now: all of it once finished; before that, without an
        incomplete UTF-8 character at the end or a tail that may be the start of a stop string."""
        if self.finish_reason:
            return self.text
        text = self.text.rstrip("\ufffd")
        held = max(
            (n for stop in self.request.stop for n in range(len(stop) - 1, 0, -1) if text.endswith(stop[:n])), default=0
        )
        return text[: len(text) - held]

    def take_event(self) -> TokenEvent | None:
        visible = self.visible_text()
        request = self.request
        if len(visible) <= request.streamed_chars:
            return None
        event = TokenEvent(
            key=request.key,
            index=request.next_index,
            text=visible[request.streamed_chars :],
            completion_tokens=len(self.tokens),
            max_tokens=request.max_tokens,
        )
        request.streamed_chars = len(visible)
        request.next_index += 1
        return event

    def answer(self, compute_ms: float) -> Answer:
        request = self.request
        if self.finish_reason is None:
            return _failure(request.key, _shutdown_error(), compute_ms)
        usage = {
            "prompt_tokens": request.prompt_tokens,
            "completion_tokens": len(self.tokens),
            "total_tokens": request.prompt_tokens + len(self.tokens),
        }
        result = {"text": self.text, "finish_reason": self.finish_reason, "usage": usage}
        if request.chat:
            result["message"] = {"role": "assistant", "content": self.text}
        return Answer(
            key=request.key, result=result, metrics=_metrics(request.prompt_tokens, len(self.tokens), compute_ms)
        )


class _RowSampler(LogitsProcessor):
    """Sampled rows: draw the token here and leave it the only finite logit, so greedy search picks
    it. Greedy rows pass through untouched."""

    def __init__(self, rows: list[_Row]):
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for index, row in enumerate(self.rows):
            if row.samples:
                token = row.draw(scores[index])
                scores[index] = float("-inf")
                scores[index, token] = 0.0
        return scores


class _RowStopper(StoppingCriteria):
    """Feeds each step's tokens to the rows and reports, per row, whether it is finished; all rows
    once ``should_stop()`` says the miner is shutting down."""

    def __init__(self, rows: list[_Row], *, decode: bool, should_stop: Callable[[], bool] | None):
        self.rows = rows
        self.decode = decode
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if self.should_stop is not None and self.should_stop():
            return torch.ones(len(self.rows), dtype=torch.bool, device=input_ids.device)
        for row, token in zip(self.rows, input_ids[:, -1].tolist(), strict=True):
            if row.finish_reason is None:
                row.append(token, decode=self.decode)
        done = [row.finish_reason is not None for row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _TokenStreamer(BaseStreamer):
    """Calls ``on_tokens`` once per decoding step with the new text of every row. generate() calls
    put() after the stopping criteria, so the rows already hold this step's token."""

    def __init__(self, rows: list[_Row], on_tokens: Callable[[list[TokenEvent]], None]):
        self.rows = rows
        self.on_tokens = on_tokens
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # the first put is the prompt
            self.prompt_seen = True
            return
        events = [event for row in self.rows if (event := row.take_event()) is not None]
        if not events:
            return
        try:
            self.on_tokens(events)
        except Exception:  # publishing is best-effort: it never fails the jobs
            logger.warning("on_tokens failed; generation goes on", exc_info=True)

    def end(self) -> None:
        """Nothing is left: the last put() published the final step."""


def _generate(model: LoadedModel, requests: list[_Request], *, on_tokens, should_stop) -> list[Answer]:
    rows = [_Row(request, model) for request in requests]
    input_ids, attention_mask = _pad([request.input_ids[0] for request in requests], model, left=True)
    config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        repetition_penalty=1.0,  # the model's own generation_config must not add processors to any row
        max_new_tokens=max(request.max_tokens for request in requests),
        pad_token_id=model.pad_token_id,
        eos_token_id=sorted(model.eos_token_ids) or None,
    )
    streamer = _TokenStreamer(rows, on_tokens) if on_tokens is not None else None
    started = time.perf_counter()
    model.model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        generation_config=config,
        logits_processor=LogitsProcessorList([_RowSampler(rows)]),
        stopping_criteria=StoppingCriteriaList(
            [_RowStopper(rows, decode=streamer is not None, should_stop=should_stop)]
        ),
        streamer=streamer,
    )
    compute_ms = _elapsed_ms(started)
    return [row.answer(compute_ms) for row in rows]


def _pad(sequences: list[list[int]], model: LoadedModel, *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, padded to the longest sequence (on the left for generation, so
    every row's next token comes at the same position)."""
    width = max(len(ids) for ids in sequences)
    ids_rows, mask_rows = [], []
    for ids in sequences:
        padding = width - len(ids)
        ids_rows.append([model.pad_token_id] * padding + ids if left else ids + [model.pad_token_id] * padding)
        mask_rows.append([0] * padding + [1] * len(ids) if left else [1] * len(ids) + [0] * padding)
    return (
        torch.tensor(ids_rows, dtype=torch.long, device=model.device),
        torch.tensor(mask_rows, dtype=torch.long, device=model.device),
    )


# --- embeddings ---------------------------------------------------------------------------


def _embed(model: LoadedModel, requests: list[_Request]) -> list[Answer]:
    """Every text of every request in forward passes of EMBEDDING_CHUNK, shortest first (least
    padding); mean pooling over the attention mask, L2-normalised."""
    texts = [(request_index, ids) for request_index, request in enumerate(requests) for ids in request.input_ids]
    order = sorted(range(len(texts)), key=lambda index: len(texts[index][1]))
    vectors: list[list[float]] = [[] for _ in texts]
    started = time.perf_counter()
    with torch.inference_mode():
        for chunk_start in range(0, len(order), EMBEDDING_CHUNK):
            chunk = order[chunk_start : chunk_start + EMBEDDING_CHUNK]
            input_ids, attention_mask = _pad([texts[index][1] for index in chunk], model, left=False)
            hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
            for index, vector in zip(chunk, torch.nn.functional.normalize(pooled, dim=-1).cpu().tolist(), strict=True):
                vectors[index] = vector
    compute_ms = _elapsed_ms(started)

    per_request: list[list[list[float]]] = [[] for _ in requests]
    for (request_index, _), vector in zip(texts, vectors, strict=True):
        per_request[request_index].append(vector)
    answers = []
    for request, embeddings in zip(requests, per_request, strict=True):
        usage = {"prompt_tokens": request.prompt_tokens, "total_tokens": request.prompt_tokens}
        result = {
            "embeddings": embeddings,
            "data": [{"object": "embedding", "index": i, "embedding": vector} for i, vector in enumerate(embeddings)],
            "dimensions": len(embeddings[0]),
            "usage": usage,
        }
        answers.append(Answer(key=request.key, result=result, metrics=_metrics(request.prompt_tokens, 0, compute_ms)))
    return answers
