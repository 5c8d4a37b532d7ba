"""What a job's payload may hold, per task: the one statement of these rules.

The submit API (``jobs.api.serializers``), ``jobs.services.job_submit`` (a catalog model's
limits), the dashboard's submit form and the inference engine all check payloads here, so a
payload the API accepts is one the platform's engine runs, its length in tokens aside (only a
loaded model's tokenizer knows it). Plain Python, no Django: the engine runs in miners' own
processes too.

A payload is a JSON object whose ``type`` is one of ``PAYLOAD_TYPES``:

- generation ("inference" completes a prompt, "chat" a conversation): ``messages``, a non-empty
  list of ``{"role", "content"}`` strings, or else ``prompt``, a non-empty string; and its
  parameters under ``params`` or, from older clients, at the payload's top level ("params"
  winning): ``max_tokens`` (1 to the model's limit), ``temperature`` (0 to 2), ``top_p`` (above
  0, at most 1), ``seed`` (0 to 2**63 - 1) and ``stop`` (a non-empty string or a list of at most
  four). A catalog model may set defaults for these (``with_default_params``): the shipped chat
  model answers greedily (temperature 0) unless a job asks otherwise;
- "embedding": ``input`` (or, from older clients, ``prompt``), a non-empty string or a list of
  them.

Each check raises :class:`PayloadError`, whose ``code`` the caller reports as it reports errors:
a 422 from the API, a form error, a failed job from the engine.
"""

PAYLOAD_TYPES = {"inference": False, "chat": False, "embedding": True}  # type → asks for embeddings
EMBEDDING_TASK = "embedding"  # the catalog's task of the models that embed; the others generate
PARAM_NAMES = ("max_tokens", "temperature", "top_p", "stop", "seed")

MAX_TOKENS = 32768  # the most any job may ask for; a catalog model's own limit may be lower
MAX_TEMPERATURE = 2.0
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 1.0
MAX_STOP_STRINGS = 4
MAX_SEED = 2**63 - 1
MAX_MESSAGES = 1024
MAX_EMBEDDING_INPUTS = 256


class PayloadError(ValueError):
    """A payload the rules refuse: ``code`` (INVALID_PAYLOAD, INVALID_PARAMS, UNSUPPORTED_TASK or
    INPUT_TOO_LONG), the payload ``field`` at fault (a parameter's own name), and a message."""

    def __init__(self, code: str, field: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.field, self.message = code, field, message


def generation_params(payload: dict) -> dict:
    """The generation parameters given, as they are (a null counts as not given)."""
    nested = payload.get("params") or {}
    if not isinstance(nested, dict):
        raise PayloadError("INVALID_PAYLOAD", "params", "params must be a JSON object")
    merged = {name: payload[name] for name in PARAM_NAMES if name in payload} | nested
    return {name: value for name, value in merged.items() if value is not None}


def check_params(params: dict, *, max_tokens: int = MAX_TOKENS) -> dict:
    """``params`` when each value keeps to its rule, ``max_tokens`` being the model's limit."""
    _check_int(params, "max_tokens", 1, max_tokens)
    _check_number(
        params, "temperature", lambda value: 0 <= value <= MAX_TEMPERATURE, f"between 0 and {MAX_TEMPERATURE}"
    )
    _check_number(params, "top_p", lambda value: 0 < value <= 1, "greater than 0 and at most 1")
    _check_int(params, "seed", 0, MAX_SEED)
    stop_strings(params)
    return params


def check_default_params(defaults) -> dict:
    """A catalog model's default parameters: an object of generation parameters, each within its rule."""
    if not isinstance(defaults, dict):
        raise PayloadError("INVALID_PARAMS", "params", "Default parameters must be a JSON object.")
    unknown = sorted(set(defaults) - set(PARAM_NAMES))
    if unknown:
        raise PayloadError("INVALID_PARAMS", unknown[0], f"Unknown parameter {unknown[0]!r}: one of {PARAM_NAMES}.")
    return check_params(defaults)


def with_default_params(payload: dict, defaults: dict) -> dict:
    """``payload`` with each of a model's ``defaults`` that it does not set itself (under ``params``
    or at its top level) added under ``params``."""
    given = generation_params(payload)
    missing = {name: value for name, value in defaults.items() if name not in given}
    if not missing:
        return payload
    return {**payload, "params": {**(payload.get("params") or {}), **missing}}


def stop_strings(params: dict) -> tuple[str, ...]:
    stop = params.get("stop", [])
    if isinstance(stop, str):
        stop = [stop]
    if (
        not isinstance(stop, list)
        or len(stop) > MAX_STOP_STRINGS
        or not all(isinstance(text, str) and text for text in stop)
    ):
        raise PayloadError(
            "INVALID_PARAMS", "stop", f"stop must be a non-empty string or a list of at most {MAX_STOP_STRINGS}"
        )
    return tuple(stop)


def requested_max_tokens(payload: dict) -> int | None:
    """The ``max_tokens`` the payload asks for, if it is a valid count (what a job is priced by)."""
    try:
        max_tokens = generation_params(payload).get("max_tokens")
    except PayloadError:
        return None
    return max_tokens if _is_int(max_tokens) and max_tokens > 0 else None


def checked_messages(messages) -> list[dict]:
    """The chat messages as ``{"role", "content"}`` (other keys dropped)."""
    if not (
        isinstance(messages, list)
        and messages
        and all(
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
            for message in messages
        )
    ):
        raise PayloadError("INVALID_PAYLOAD", "messages", "Must be a non-empty list of {role, content} objects.")
    return [{"role": message["role"], "content": message["content"]} for message in messages]


def checked_prompt(payload: dict) -> str:
    prompt = payload.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise PayloadError("INVALID_PAYLOAD", "prompt", "A prompt (or chat messages) is required.")
    return prompt


def embedding_texts(payload: dict) -> list[str]:
    texts = payload.get("input", payload.get("prompt"))
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) and text for text in texts):
        raise PayloadError("INVALID_PAYLOAD", "input", "An embedding job needs input: a string or a list of strings.")
    return texts


def check_payload(payload: dict, *, max_input_chars: int, max_tokens: int = MAX_TOKENS) -> None:
    """Check a job's whole payload, its ``type`` already one of ``PAYLOAD_TYPES``: its content for
    its type, at most ``max_input_chars`` characters of text, and its generation parameters."""
    if PAYLOAD_TYPES[payload["type"]]:
        texts = embedding_texts(payload)
        if len(texts) > MAX_EMBEDDING_INPUTS:
            raise _too_long("input", f"An embedding job takes at most {MAX_EMBEDDING_INPUTS} inputs.")
        _check_length("input", texts, max_input_chars)
        return
    if payload.get("messages") is not None:
        messages = checked_messages(payload["messages"])
        if len(messages) > MAX_MESSAGES:
            raise _too_long("messages", f"A job takes at most {MAX_MESSAGES} messages.")
        _check_length("messages", [message["content"] for message in messages], max_input_chars)
    else:
        _check_length("prompt", [checked_prompt(payload)], max_input_chars)
    check_params(generation_params(payload), max_tokens=max_tokens)


def check_fits_model(payload: dict, *, payload_type: str | None, model: str, task: str, max_tokens: int) -> None:
    """Check that a catalog model (``model``, of ``task``, producing at most ``max_tokens``) can
    run a payload of ``payload_type``: a generation model a generation job, an embedding model an
    embedding job."""
    if payload_type is not None and PAYLOAD_TYPES.get(payload_type) != (task == EMBEDDING_TASK):
        raise PayloadError(
            "UNSUPPORTED_TASK", "type", f"Model {model!r} is a {task} model and cannot run {payload_type} jobs."
        )
    if task != EMBEDDING_TASK:
        requested = requested_max_tokens(payload)
        if requested is not None and requested > max_tokens:
            raise PayloadError("INVALID_PARAMS", "max_tokens", f"max_tokens may be at most {max_tokens} for {model}.")


def _check_length(field: str, texts: list[str], max_input_chars: int) -> None:
    if sum(len(text) for text in texts) > max_input_chars:
        raise _too_long(field, f"A job's {field} may hold at most {max_input_chars} characters.")


def _too_long(field: str, message: str) -> PayloadError:
    return PayloadError("INPUT_TOO_LONG", field, message)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(params: dict, name: str, low: int, high: int) -> None:
    value = params.get(name)
    if value is not None and not (_is_int(value) and low <= value <= high):
        raise PayloadError("INVALID_PARAMS", name, f"{name} must be an integer from {low} to {high}")


def _check_number(params: dict, name: str, within, bounds: str) -> None:
    value = params.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError("INVALID_PARAMS", name, f"{name} must be a number")
    if not within(value):
        raise PayloadError("INVALID_PARAMS", name, f"{name} must be {bounds}")
