"""A workflow's shape: its steps checked as a DAG, and the templates of their prompts.

``steps`` is an object keyed by step id; ``dependencies`` maps a step id to the ids it waits for.
A step is an inference job (``type`` inference, chat or embedding; ``model``, ``prompt``,
``params``) or an agent task (``type`` task; ``task_type``, ``task_data``, ``requirements``);
each may set ``retries`` (0 to 10), ``timeout_seconds`` and ``budget``. A prompt (or a task's
``task_data`` strings) may name ``{{inputs.<name>}}`` and ``{{steps.<id>.output}}`` of a step it
waits for, directly or through others.
"""

import json
import re
from decimal import Decimal, InvalidOperation

from django.conf import settings

from catalog import payloads
from catalog.selectors import catalog_entry
from core.errors import Invalid

STEP_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TEMPLATE = re.compile(r"\{\{\s*(?:inputs\.([A-Za-z0-9_-]+)|steps\.([A-Za-z0-9_-]+)\.output)\s*\}\}")
JOB_STEP_TYPES = ("inference", "chat", "embedding")
TASK_STEP_TYPE = "task"
TASK_PRIORITIES = ("urgent", "critical", "high", "normal", "low")
MAX_STEPS = 64
MAX_RETRIES = 10
DEFAULT_TIMEOUT_SECONDS = 900


def _invalid(message: str, code: str = "INVALID_WORKFLOW") -> Invalid:
    return Invalid(message, code=code, errors={"steps": [message]})


def step_type(step: dict) -> str:
    return step.get("type") or "inference"


def step_texts(step: dict) -> list[str]:
    """The strings of a step that templates may fill."""
    if step_type(step) == TASK_STEP_TYPE:
        return list(_strings(step.get("task_data") or {}))
    return list(_strings(step.get("prompt", step.get("input"))))


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def references(step: dict) -> tuple[set[str], set[str]]:
    """The inputs and the steps a step's templates name."""
    inputs, steps = set(), set()
    for text in step_texts(step):
        for match in TEMPLATE.finditer(text):
            if match.group(1):
                inputs.add(match.group(1))
            else:
                steps.add(match.group(2))
    return inputs, steps


def check(steps, dependencies) -> None:
    """A 422 unless ``steps`` and ``dependencies`` form a DAG whose references all resolve and whose
    models are the catalog's."""
    if not isinstance(steps, dict) or not steps:
        raise _invalid("steps must be a non-empty object keyed by step id.")
    if len(steps) > MAX_STEPS:
        raise _invalid(f"A workflow has at most {MAX_STEPS} steps.")
    if not isinstance(dependencies, dict):
        raise _invalid("dependencies must be an object mapping a step id to the ids it waits for.")
    for step_id, step in steps.items():
        if not STEP_ID.match(step_id):
            raise _invalid(f"Step id {step_id!r} must be 1 to 64 letters, digits, - or _.")
        _check_step(step_id, step)
    for step_id, waits_for in dependencies.items():
        if step_id not in steps:
            raise _invalid(f"dependencies name an unknown step {step_id!r}.", code="DANGLING_REFERENCE")
        if not isinstance(waits_for, list) or not all(isinstance(d, str) for d in waits_for):
            raise _invalid(f"dependencies of {step_id!r} must be a list of step ids.")
        for dependency in waits_for:
            if dependency not in steps:
                raise _invalid(f"{step_id!r} waits for an unknown step {dependency!r}.", code="DANGLING_REFERENCE")
    topological_order(steps, dependencies)  # a cycle is a 422
    for step_id, step in steps.items():
        _, named = references(step)
        reachable = ancestors(step_id, dependencies)
        for other in named:
            if other not in steps:
                raise _invalid(f"{step_id!r} refers to an unknown step {other!r}.", code="DANGLING_REFERENCE")
            if other not in reachable:
                raise _invalid(
                    f"{step_id!r} refers to the output of {other!r} without waiting for it.", code="DANGLING_REFERENCE"
                )


def _check_step(step_id: str, step) -> None:
    if not isinstance(step, dict):
        raise _invalid(f"Step {step_id!r} must be an object.")
    kind = step_type(step)
    if kind not in (*JOB_STEP_TYPES, TASK_STEP_TYPE):
        raise _invalid(f"Step {step_id!r} has an unknown type {kind!r}.")
    if kind == TASK_STEP_TYPE:
        if not isinstance(step.get("task_data", {}), dict) or not isinstance(step.get("requirements", {}), dict):
            raise _invalid(f"Step {step_id!r}: task_data and requirements must be objects.")
        if step.get("priority", "normal") not in TASK_PRIORITIES:
            raise _invalid(f"Step {step_id!r}: priority must be one of {', '.join(TASK_PRIORITIES)}.")
        requirements = step.get("requirements") or {}
        capabilities = requirements.get("capabilities", [])
        if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
            raise _invalid(f"Step {step_id!r}: requirements.capabilities must be a list of names.")
        if not isinstance(requirements.get("agent_type", ""), str):
            raise _invalid(f"Step {step_id!r}: requirements.agent_type must be a name.")
    else:
        model = step.get("model")
        if not isinstance(model, str) or not model:
            raise _invalid(f"Step {step_id!r} needs a model.")
        entry = catalog_entry(model)
        if entry is None or not entry.enabled:
            raise _invalid(f"Step {step_id!r}: unknown model {model!r}.", code="UNKNOWN_MODEL")
        if not step_texts(step):
            raise _invalid(f"Step {step_id!r} needs a prompt.")
        if not isinstance(step.get("params", {}), dict):
            raise _invalid(f"Step {step_id!r}: params must be an object.")
        try:
            check_job_payload(job_payload(step, text="x"), entry=entry)
        except payloads.PayloadError as error:
            raise _invalid(f"Step {step_id!r}: {error.message}", code=error.code) from None
    retries = step.get("retries", 0)
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= MAX_RETRIES:
        raise _invalid(f"Step {step_id!r}: retries must be an integer from 0 to {MAX_RETRIES}.")
    timeout = step.get("timeout_seconds", DEFAULT_TIMEOUT_SECONDS)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or not 1 <= timeout <= 7 * 24 * 3600:
        raise _invalid(f"Step {step_id!r}: timeout_seconds must be an integer from 1 to 604800.")
    if step.get("budget") is not None:
        step_budget(step)


def job_payload(step: dict, *, text) -> dict:
    """The payload of a job step's job, its prompt (or embedding input) ``text``."""
    kind = step_type(step)
    payload = {"type": kind, "model": step["model"], "params": step.get("params") or {}}
    payload["input" if kind == "embedding" else "prompt"] = text
    return payload


def check_job_payload(payload: dict, *, entry) -> None:
    """The jobs' payload rules, and the model's (``catalog.payloads``); a PayloadError if broken."""
    payloads.check_payload(payload, max_input_chars=settings.JOB_MAX_INPUT_CHARS, max_tokens=entry.max_tokens)
    payloads.check_fits_model(
        payload, payload_type=payload["type"], model=entry.name, task=entry.task, max_tokens=entry.max_tokens
    )


def step_budget(step: dict) -> Decimal | None:
    value = step.get("budget")
    if value is None:
        return None
    try:
        budget = Decimal(str(value))
    except InvalidOperation:
        raise _invalid("A step's budget must be a number.") from None
    if not budget.is_finite() or budget < 0:
        raise _invalid("A step's budget must be a non-negative number.")
    return budget


def topological_order(steps: dict, dependencies: dict) -> list[str]:
    """The step ids, each after those it waits for (ties by id); a cycle is a 422."""
    waiting = {step_id: set(dependencies.get(step_id, [])) for step_id in steps}
    order: list[str] = []
    while waiting:
        ready = sorted(step_id for step_id, deps in waiting.items() if not deps)
        if not ready:
            raise _invalid(f"The dependencies form a cycle through {', '.join(sorted(waiting))}.", code="CYCLE")
        for step_id in ready:
            order.append(step_id)
            del waiting[step_id]
        for deps in waiting.values():
            deps.difference_update(ready)
    return order


def ancestors(step_id: str, dependencies: dict) -> set[str]:
    seen: set[str] = set()
    stack = list(dependencies.get(step_id, []))
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(dependencies.get(current, []))
    return seen


def render(text: str, *, inputs: dict, outputs: dict) -> str:
    def value(match: re.Match) -> str:
        found = inputs.get(match.group(1)) if match.group(1) else outputs.get(match.group(2))
        return found if isinstance(found, str) else json.dumps(found, ensure_ascii=False)

    return TEMPLATE.sub(value, text)


def render_value(value, *, inputs: dict, outputs: dict):
    if isinstance(value, str):
        return render(value, inputs=inputs, outputs=outputs)
    if isinstance(value, dict):
        return {key: render_value(item, inputs=inputs, outputs=outputs) for key, item in value.items()}
    if isinstance(value, list):
        return [render_value(item, inputs=inputs, outputs=outputs) for item in value]
    return value


def missing_inputs(steps: dict, inputs: dict) -> list[str]:
    named = set()
    for step in steps.values():
        named |= references(step)[0]
    return sorted(name for name in named if name not in inputs)
