"""What a share's job is given and what its answer is: pure functions over payloads and results."""

import re

from jobs.models import JobType

JUDGE_INSTRUCTION = "Which answer is best? Reply with its number only."


def with_input(payload: dict, item: str, *, job_type: str) -> dict:
    """The payload of a split task's share: the task's payload with one item of its list input."""
    payload = {k: v for k, v in payload.items() if k not in ("input", "prompt", "messages")}
    if job_type in (JobType.EMBEDDING, JobType.TASK):
        return {**payload, "input": item}
    return {**payload, "prompt": item}


def output_of(job):
    """A share's answer: a generation's text, an input's embedding, an agent task's output, else
    the whole result."""
    result = job.result
    if not isinstance(result, dict):
        return result
    if isinstance(result.get("text"), str):
        return result["text"]
    embeddings = result.get("embeddings")
    if isinstance(embeddings, list):
        return embeddings[0] if len(embeddings) == 1 else embeddings
    if job.type == JobType.TASK and "output" in result:
        return result["output"]
    return result


def judge_prompt(payload: dict, answers: list) -> str:
    """What a judging model is asked: the task, the answers numbered from 1, the instruction."""
    question = payload.get("prompt")
    if question is None and isinstance(payload.get("messages"), list):
        question = "\n".join(str(m.get("content", "")) for m in payload["messages"] if isinstance(m, dict))
    lines = [f"Task: {question}", ""]
    lines += [f"Answer {number}: {answer}" for number, answer in enumerate(answers, start=1)]
    return "\n".join([*lines, "", JUDGE_INSTRUCTION])


def judge_choice(result, *, count: int) -> int | None:
    """The answer a judging model named (0-based), from the first number in its text; None when it
    named none of the ``count``."""
    text = result.get("text") if isinstance(result, dict) else result
    match = re.search(r"\d+", text) if isinstance(text, str) else None
    if match is None:
        return None
    number = int(match.group())
    return number - 1 if 1 <= number <= count else None
