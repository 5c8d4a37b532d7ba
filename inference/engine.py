"""The transformers inference engine: load a model once, validate job payloads, run them micro-batched.

Plain Python, no Django: the in-cluster Dramatiq worker and the external HTTP miner agent both use it.
Importing this module imports torch and transformers (~1.5 s, ~300 MB), so import it where inference
runs, not in modules every web process loads.

Generation runs as a continuous batch (``Generation``): one decoding loop per model that jobs join
between steps and leave as soon as they finish, each row with its own sampling, stop strings and
token limit. ``execute`` runs a fixed set of jobs through the same loop; embeddings run as plain
batched forward passes.
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
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, DynamicCache

from catalog import payloads
from catalog.payloads import DEFAULT_TEMPERATURE, DEFAULT_TOP_P, MAX_SEED, PAYLOAD_TYPES, PayloadError

logger = logging.getLogger(__name__)

TASKS = ("text-generation", "chat", "embedding")
SOURCE_KINDS = ("directory", "package", "hub")
GENERATION_TASKS = frozenset({"text-generation", "chat"})
EMBEDDING_CHUNK = 32
# Prefills a continuous batch runs in a row, each giving newcomers their first token, before its
# running rows decode again: arrivals in quick succession delay the others by at most this many.
PREFILLS_BEFORE_DECODING = 4
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

    @classmethod
    def from_catalog(cls, entry) -> ModelSpec:
        """What the engine needs to load a ``catalog.models.CatalogModel``."""
        return cls(**{spec_field.name: getattr(entry, spec_field.name) for spec_field in fields(cls)})


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


def unload(name: str) -> None:
    """Forget the model named ``name`` in this process: the next ``load`` of that name reads its
    source again (a catalog entry pointed elsewhere, in tests)."""
    with _registry_lock:
        _models.pop(name, None)


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
    """One validated job."""

    key: str
    input_ids: list[list[int]]  # one prompt for generation; one entry per text for embeddings
    max_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0
    chat: bool = False

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
    """Run ``items`` ((key, job payload) pairs, distinct keys) together and return one Answer per
    item, in order.

    Never raises for a bad item: its Answer carries the error and the others still run.
    ``on_tokens`` gets each decoding step's new text for all streaming rows at once (steps that
    add no visible text are skipped); its exceptions are logged and ignored. ``should_stop()``
    returning True ends generation: unfinished items get MINER_SHUTDOWN.
    """
    if model.spec.task == "embedding":
        return _execute_embeddings(model, items, should_stop=should_stop)
    with Generation(model, capacity=max(1, len(items)), on_tokens=on_tokens, should_stop=should_stop) as batch:
        answers = batch.add(items)
        while batch:
            answers += batch.step()
    by_key = {answer.key: answer for answer in answers}
    return [by_key[str(key)] for key, _ in items]


def _execute_embeddings(model: LoadedModel, items: list[tuple[str, dict]], *, should_stop) -> list[Answer]:
    answers: dict[int, Answer] = {}
    with model.lock:
        positions, requests = [], []
        for position, (key, payload) in enumerate(items):
            try:
                requests.append(_validate(model, str(key), payload))
                positions.append(position)
            except InferenceError as error:
                answers[position] = _failure(str(key), error)
        if requests:
            run = partial(_embed, model)
            for position, answer in zip(
                positions, _run_splitting_on_oom(model, requests, run, should_stop), strict=True
            ):
                answers[position] = answer
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


def _validate(model: LoadedModel, key: str, payload) -> _Request:
    """The job as the engine runs it, its payload checked by the platform's payload rules
    (``catalog.payloads``) and against what the loaded model can attend to."""
    if not isinstance(payload, dict):
        raise InferenceError("INVALID_PAYLOAD", "the job payload must be a JSON object")
    payload_type = payload.get("type")
    if payload_type is not None and payload_type not in PAYLOAD_TYPES:
        raise InferenceError("INVALID_PAYLOAD", f"type must be one of {', '.join(PAYLOAD_TYPES)}, not {payload_type!r}")
    spec = model.spec
    try:
        payloads.check_fits_model(
            payload, payload_type=payload_type, model=spec.name, task=spec.task, max_tokens=spec.max_tokens
        )
        if spec.task == "embedding":
            return _validate_embedding(model, key, payload)
        return _validate_generation(model, key, payload, chat=payload_type == "chat")
    except PayloadError as error:
        raise InferenceError(error.code, error.message) from None


def _validate_generation(model: LoadedModel, key: str, payload: dict, *, chat: bool) -> _Request:
    params = payloads.check_params(payloads.generation_params(payload), max_tokens=model.spec.max_tokens)
    if payload.get("messages") is not None:
        text, templated = _apply_chat_template(model, payloads.checked_messages(payload["messages"])), True
    else:
        prompt = payloads.checked_prompt(payload)
        templated = model.spec.task == "chat" and bool(model.tokenizer.chat_template)
        text = _apply_chat_template(model, [{"role": "user", "content": prompt}]) if templated else prompt
    # A chat template already carries the model's special tokens; a raw prompt gets the usual BOS.
    prompt_ids = model.tokenizer(text, add_special_tokens=not templated)["input_ids"]
    if not prompt_ids:
        raise InferenceError("INVALID_PAYLOAD", "the prompt encodes to no tokens")

    room = model.context_length - len(prompt_ids)
    max_tokens = params.get("max_tokens")
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
    seed = params.get("seed")
    return _Request(
        key=key,
        input_ids=[prompt_ids],
        max_tokens=max_tokens,
        temperature=float(params.get("temperature", DEFAULT_TEMPERATURE)),
        top_p=float(params.get("top_p", DEFAULT_TOP_P)),
        stop=payloads.stop_strings(params),
        seed=secrets.randbelow(MAX_SEED + 1) if seed is None else seed,
        chat=chat or templated,
    )


def _validate_embedding(model: LoadedModel, key: str, payload: dict) -> _Request:
    input_ids = [model.tokenizer(text)["input_ids"] for text in payloads.embedding_texts(payload)]
    for index, ids in enumerate(input_ids):
        if len(ids) > model.context_length:
            raise InferenceError(
                "INPUT_TOO_LONG",
                f"input {index} is {len(ids)} tokens; {model.spec.name} embeds at most {model.context_length}",
            )
    return _Request(key=key, input_ids=input_ids)


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


class Generation:
    """A continuous batch of one generation model's jobs.

    Jobs join with ``add()`` whenever there is ``room``. Each ``step()`` is one forward pass: it
    prefills the jobs waiting to join (together), which gives each its first token, or else
    decodes one token for every row; it returns the answers of the rows that finished: a job
    leaves the batch, answered, as soon as it ends, and a new one starts at the next step instead
    of after the longest answer of the batch before it.
    Sampling, stop strings and ``max_tokens`` apply per row, and a greedy job gives the same text
    as alone.

    The rows share one KV cache (transformers' ``DynamicCache``), left-padded: a row's columns end
    at the right edge and an attention mask hides its padding, so rows of any length decode as
    one batch. Joining rows are padded to the batch's width (or the batch to theirs) and
    concatenated; leaving rows are cut out, and so is padding no remaining row needs.

    Out of memory, the batch splits instead of failing: joining rows are prefilled in halves, and
    a decoding batch keeps its first half while the other half waits to be prefilled again (its
    text so far kept) until rows leave; ``capacity`` stays halved until the batch empties. A job
    out of memory even alone fails with OUT_OF_MEMORY.

    Holds the model's lock while open: ``with Generation(model, capacity=16) as batch``.
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        capacity: int,
        on_tokens: Callable[[list[TokenEvent]], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ):
        if model.spec.task not in GENERATION_TASKS:
            raise ValueError(f"{model.spec.name} is a {model.spec.task} model, not a generation model")
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.model = model
        self.capacity = self.max_capacity = capacity
        self.on_tokens = on_tokens
        self.should_stop = should_stop
        self._waiting: list[_Row] = []
        self._rows: list[_Row] = []
        self._prefills_in_a_row = 0
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # (rows, cache columns): which columns each row attends to
        self._next_tokens: torch.Tensor | None = None  # (rows,): each row's newest token, not yet in the cache
        self._positions: torch.Tensor | None = None  # (rows,): that token's position in its own sequence

    def __enter__(self) -> Generation:
        self.model.lock.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.model.lock.release()

    def __len__(self) -> int:
        return len(self._rows) + len(self._waiting)

    @property
    def room(self) -> int:
        """How many more jobs may join now."""
        return max(0, self.capacity - len(self))

    @property
    def waiting(self) -> int:
        """How many jobs wait to be prefilled."""
        return len(self._waiting)

    @property
    def keys(self) -> list[str]:
        return [row.request.key for row in (*self._rows, *self._waiting)]

    def add(self, items: list[tuple[str, dict]]) -> list[Answer]:
        """Let jobs ((key, payload) pairs) join at the next step; returns the failures of those that
        cannot run (invalid payloads, prompts too long…), which do not join."""
        failures = []
        for key, payload in items:
            try:
                request = _validate(self.model, str(key), payload)
            except InferenceError as error:
                failures.append(_failure(str(key), error))
            else:
                self._waiting.append(_Row(request, self.model, decode=self.on_tokens is not None))
        return failures

    @torch.inference_mode()
    def drop(self, keys) -> None:
        """Take these jobs out of the batch without an answer (cancelled, or no longer this miner's)."""
        keys = set(keys)
        self._waiting = [row for row in self._waiting if row.request.key not in keys]
        self._keep([index for index, row in enumerate(self._rows) if row.request.key not in keys])
        self._reset_capacity_when_empty()

    @torch.inference_mode()
    def step(self) -> list[Answer]:
        """One forward pass, and the answers of the rows it finished: the rows waiting to join (as
        many as there is room for) are prefilled, which gives each its first token, else every
        running row decodes one token. A prefill goes first so that a newcomer's first token waits
        for at most the pass already running, not for that pass and a decoding step after it;
        after ``PREFILLS_BEFORE_DECODING`` prefills in a row the running rows decode, however many
        wait. Once ``should_stop()`` says so, every unfinished job is answered MINER_SHUTDOWN
        instead."""
        answers = []
        if self.should_stop is not None and self.should_stop():
            answers = [row.answer() for row in (*self._rows, *self._waiting)]
            self._waiting = []
            self._keep([])
        elif (joining := self._waiting[: self.capacity - len(self._rows)]) and (
            not self._rows or self._prefills_in_a_row < PREFILLS_BEFORE_DECODING
        ):
            del self._waiting[: len(joining)]
            if self._rows:
                self._prefills_in_a_row += 1  # the running rows wait a step for it
            self._prefill(joining, answers)
        elif self._rows:
            self._decode(answers)
            self._prefills_in_a_row = 0
        self._reset_capacity_when_empty()
        return answers

    # --- the batch's passes ---------------------------------------------------------------

    def _prefill(self, rows: list[_Row], answers: list[Answer]) -> None:
        """One forward pass over the rows' whole sequences (the prompt, and the text so far of a row
        that waited after an out-of-memory split); they join the batch with their next token."""
        input_ids, mask = _pad([row.sequence for row in rows], self.model, left=True)
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        cache = DynamicCache()
        for row in rows:
            row.start()
        try:
            logits = self._forward(input_ids, mask, positions, cache)
        except Exception as exc:
            if not _is_out_of_memory(exc):
                answers += self._failed(rows, exc)
                return
            logits = None
        if logits is None:  # out of memory: retried outside the except block, whose traceback holds tensors
            del cache
            _release_cuda_memory()
            self._split_prefill(rows, answers)
            return
        staying = self._advance(rows, self._choose(rows, logits), answers)
        if staying:
            index = torch.tensor(staying, device=self.model.device)
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
            self._join(
                [rows[i] for i in staying],
                cache,
                mask.index_select(0, index),
                torch.tensor([rows[i].tokens[-1] for i in staying], device=self.model.device),
                mask.sum(dim=-1).index_select(0, index),
            )

    def _split_prefill(self, rows: list[_Row], answers: list[Answer]) -> None:
        if len(rows) > 1:
            half = len(rows) // 2
            logger.warning(
                "%s ran out of memory prefilling %d jobs; retrying in halves", self.model.spec.name, len(rows)
            )
            self._prefill(rows[:half], answers)
            self._prefill(rows[half:], answers)
        elif self._rows:  # alone beside the running batch: it waits until rows leave
            self._waiting.insert(0, rows[0])
            self.capacity = len(self._rows)
        else:
            answers.append(rows[0].failure(_out_of_memory_alone(self.model)))

    def _decode(self, answers: list[Answer]) -> None:
        width = self._mask.shape[1]
        mask = torch.cat([self._mask, self._mask.new_ones((len(self._rows), 1))], dim=1)
        try:
            logits = self._forward(self._next_tokens[:, None], mask, self._positions[:, None], self._cache)
        except Exception as exc:
            self._crop(width)
            if not _is_out_of_memory(exc):
                answers += self._failed(self._rows, exc)
                self._keep([])
                return
            logits = None
        if logits is None:
            _release_cuda_memory()
            if len(self._rows) == 1:
                answers.append(self._rows[0].failure(_out_of_memory_alone(self.model)))
                self._keep([])
                return
            half = len(self._rows) // 2
            logger.warning(
                "%s ran out of memory decoding %d jobs; going on with %d", self.model.spec.name, len(self._rows), half
            )
            self._waiting[:0] = self._rows[half:]
            self._keep(list(range(half)))
            self.capacity = half
            return
        self._mask = mask
        tokens = self._choose(self._rows, logits)
        self._next_tokens = torch.tensor(tokens, device=self.model.device)
        self._positions = self._positions + 1
        self._keep(self._advance(self._rows, tokens, answers))

    def _forward(self, input_ids, mask, positions, cache) -> torch.Tensor:
        """The next-token logits (float32) of every row."""
        output = self.model.model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
            logits_to_keep=1,
        )  # fmt: skip
        return output.logits[:, -1, :].float()

    def _choose(self, rows: list[_Row], logits: torch.Tensor) -> list[int]:
        tokens = logits.argmax(dim=-1).tolist()
        for index, row in enumerate(rows):
            if row.samples:
                tokens[index] = row.draw(logits[index])
        return tokens

    def _advance(self, rows: list[_Row], tokens: list[int], answers: list[Answer]) -> list[int]:
        """Give each row its token and stream the new text; the finished rows' answers go to
        ``answers``, and the indices of the others are returned."""
        staying = []
        for index, (row, token) in enumerate(zip(rows, tokens, strict=True)):
            row.append(token)
            if row.finish_reason is None:
                staying.append(index)
            else:
                answers.append(row.answer())
        if self.on_tokens is not None:
            events = [event for row in rows if (event := row.take_event()) is not None]
            if events:
                try:
                    self.on_tokens(events)
                except Exception:  # publishing is best-effort: it never fails the jobs
                    logger.warning("on_tokens failed; generation goes on", exc_info=True)
        return staying

    def _failed(self, rows: list[_Row], exc: Exception) -> list[Answer]:
        logger.warning("inference on %s failed", self.model.spec.name, exc_info=exc)
        error = InferenceError("INFERENCE_FAILED", _describe(exc))
        return [row.failure(error) for row in rows]

    # --- the shared cache -----------------------------------------------------------------

    def _join(self, rows, cache: DynamicCache, mask, next_tokens, positions) -> None:
        if not self._rows:
            self._cache, self._mask = cache, mask
            self._next_tokens, self._positions = next_tokens, positions
        else:
            width = max(self._mask.shape[1], mask.shape[1])
            self._mask = torch.cat([_pad_left(self._mask, width), _pad_left(mask, width)])
            for batch_layer, layer in zip(self._cache.layers, cache.layers, strict=True):
                batch_layer.keys = torch.cat([_pad_left(batch_layer.keys, width), _pad_left(layer.keys, width)])
                batch_layer.values = torch.cat([_pad_left(batch_layer.values, width), _pad_left(layer.values, width)])
            self._next_tokens = torch.cat([self._next_tokens, next_tokens])
            self._positions = torch.cat([self._positions, positions])
        self._rows += rows
        self._trim()

    def _keep(self, indices: list[int]) -> None:
        """Keep only the rows at ``indices`` in the batch."""
        if len(indices) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in indices]
        if not self._rows:
            self._cache = self._mask = self._next_tokens = self._positions = None
            return
        index = torch.tensor(indices, device=self.model.device)
        for layer in self._cache.layers:
            layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
        self._mask = self._mask.index_select(0, index)
        self._next_tokens = self._next_tokens.index_select(0, index)
        self._positions = self._positions.index_select(0, index)
        self._trim()

    def _trim(self) -> None:
        """Cut the columns on the left that no row attends to (the padding of rows that left)."""
        first = int(self._mask.any(dim=0).to(torch.int8).argmax())
        if first:
            self._mask = self._mask[:, first:]
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]

    def _crop(self, width: int) -> None:
        """Undo what a failed pass appended to some layers of the cache."""
        for layer in self._cache.layers:
            layer.keys, layer.values = layer.keys[..., :width, :], layer.values[..., :width, :]

    def _reset_capacity_when_empty(self) -> None:
        if not self:
            self.capacity = self.max_capacity


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """``tensor`` (a mask, or a cache layer's keys or values) with zero columns added on the left up to ``width``."""
    missing = width - (tensor.shape[1] if tensor.dim() == 2 else tensor.shape[-2])
    if not missing:
        return tensor
    padding = (missing, 0) if tensor.dim() == 2 else (0, 0, missing, 0)
    return torch.nn.functional.pad(tensor, padding)


def _out_of_memory_alone(model: LoadedModel) -> InferenceError:
    return InferenceError("OUT_OF_MEMORY", f"{model.spec.name} ran out of memory on this job even alone")


class _Row:
    """One job's sequence in a generation batch. It outlives a pass that ran out of memory, so the
    job goes on where it was and never re-sends text the caller already has."""

    def __init__(self, request: _Request, model: LoadedModel, *, decode: bool):
        self.request = request
        self.tokens: list[int] = []
        self.text = ""
        self._prefix_offset = self._read_offset = 0
        self.finish_reason: str | None = None
        self.streamed_chars = 0
        self.next_index = 0
        self._model = model
        self._decode = decode
        self._started: float | None = None
        self._generator = None
        if request.temperature > 0:
            self._generator = torch.Generator(device=model.device).manual_seed(request.seed)

    @property
    def sequence(self) -> list[int]:
        return self.request.input_ids[0] + self.tokens

    @property
    def samples(self) -> bool:
        return self._generator is not None and self.finish_reason is None

    def start(self) -> None:
        if self._started is None:
            self._started = time.perf_counter()

    def draw(self, logits: torch.Tensor) -> int:
        """A token drawn from ``logits`` at this row's temperature and top_p, with its own generator."""
        probs = torch.softmax(logits / self.request.temperature, dim=-1)
        if self.request.top_p < 1:
            sorted_probs, order = probs.sort(descending=True)
            # Keep the smallest set of most likely tokens whose mass reaches top_p (always at least one).
            sorted_probs[sorted_probs.cumsum(dim=-1) - sorted_probs > self.request.top_p] = 0
            return int(order[torch.multinomial(sorted_probs, 1, generator=self._generator)])
        return int(torch.multinomial(probs, 1, generator=self._generator))

    def append(self, token: int) -> None:
        """Take this step's token and decide whether the row is finished. ``text`` is decoded at the
        end, or token by token when streaming or stop strings need it."""
        self.tokens.append(token)
        ended_by_eos = token in self._model.eos_token_ids
        at_limit = len(self.tokens) >= self.request.max_tokens
        content_end = len(self.tokens) - 1 if ended_by_eos else len(self.tokens)
        if self._decode or self.request.stop:
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
        if len(visible) <= self.streamed_chars:
            return None
        event = TokenEvent(
            key=self.request.key,
            index=self.next_index,
            text=visible[self.streamed_chars :],
            completion_tokens=len(self.tokens),
            max_tokens=self.request.max_tokens,
        )
        self.streamed_chars = len(visible)
        self.next_index += 1
        return event

    def answer(self) -> Answer:
        """The job's result once finished; MINER_SHUTDOWN before that."""
        request = self.request
        if self.finish_reason is None:
            return self.failure(_shutdown_error())
        usage = {
            "prompt_tokens": request.prompt_tokens,
            "completion_tokens": len(self.tokens),
            "total_tokens": request.prompt_tokens + len(self.tokens),
        }
        result = {"text": self.text, "finish_reason": self.finish_reason, "usage": usage}
        if request.chat:
            result["message"] = {"role": "assistant", "content": self.text}
        metrics = _metrics(request.prompt_tokens, len(self.tokens), self._compute_ms())
        return Answer(key=request.key, result=result, metrics=metrics)

    def failure(self, error: InferenceError) -> Answer:
        return _failure(self.request.key, error, self._compute_ms())

    def _compute_ms(self) -> float:
        """Time since the row first joined a batch: what it took to answer, not waiting to join."""
        return 0.0 if self._started is None else _elapsed_ms(self._started)


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
