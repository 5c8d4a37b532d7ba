"""When independent answers to the same job agree: pure functions, no database.

Two kinds of agreement, named by a verified job's ``verification.agreement``:

- ``exact``: the answers' texts are equal once whitespace is normalised (runs of whitespace are
  one space, none at either end). For greedy generation (temperature 0, a seed), where honest
  miners running the same model produce the same text. Answers without text (embeddings, other
  JSON) are compared as canonical JSON.
- ``semantic``: embeddings agree when every pair of corresponding vectors has a cosine similarity
  of at least ``threshold`` (and the answers hold as many vectors, of the same length). Sampled
  text (temperature above 0) cannot be expected to match: two texts agree when the Jaccard
  similarity of their sets of lower-cased words is at least ``threshold``. That catches a miner
  that answers something else (another prompt, another model, noise) and lets honest samples of
  one model through, but not a subtly wrong answer phrased like the right one: for that, ask for
  greedy decoding and ``exact``.

``consensus`` finds the largest group of answers that agree with one of them (its
representative; ties go to the earliest) and says whether it reaches the
number required.
"""

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings

from core.errors import Invalid

EXACT = "exact"
SEMANTIC = "semantic"
AGREEMENTS = (EXACT, SEMANTIC)
# The similarity ``semantic`` agreement asks for when the job names none.
DEFAULT_SEMANTIC_THRESHOLD = 0.95

_WHITESPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")
_TEXT_KEYS = ("text", "output", "completion", "response", "content")


@dataclass(frozen=True)
class Consensus:
    """The largest agreeing group: the indexes of its answers, its representative (the answer
    the others agree with) first, and whether it has at least ``required`` members."""

    group: tuple[int, ...]
    reached: bool

    @property
    def representative(self) -> int | None:
        return self.group[0] if self.group else None

    def dissenters(self, count: int) -> tuple[int, ...]:
        """The indexes, out of ``count`` answers, outside the group."""
        return tuple(index for index in range(count) if index not in self.group)


def normalise_text(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def answer_text(result) -> str | None:
    """The generated text of a result (as miners name it), or None when it has none."""
    if isinstance(result, str):
        return result
    if not isinstance(result, dict):
        return None
    for key in _TEXT_KEYS:
        if isinstance(result.get(key), str):
            return result[key]
    message = result.get("message")
    if isinstance(message, dict) and isinstance(message.get("content"), str):
        return message["content"]
    return None


def answer_vectors(result) -> list[list[float]] | None:
    """The embedding vectors of a result (``embeddings``, or OpenAI's ``data``), or None."""
    if not isinstance(result, dict):
        return None
    vectors = result.get("embeddings")
    if vectors is None and isinstance(result.get("data"), list):
        vectors = [item.get("embedding") for item in result["data"] if isinstance(item, dict)]
    if not isinstance(vectors, list) or not vectors:
        return None
    if not all(isinstance(vector, list) and all(_is_number(x) for x in vector) for vector in vectors):
        return None
    return vectors


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) != len(b) or not a:
        return 0.0
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norms if norms else 0.0


def word_jaccard(a: str, b: str) -> float:
    words_a, words_b = set(_WORD.findall(a.lower())), set(_WORD.findall(b.lower()))
    if not words_a and not words_b:
        return 1.0
    return len(words_a & words_b) / len(words_a | words_b)


def _exact_key(result) -> str:
    text = answer_text(result)
    if text is not None:
        return "text:" + normalise_text(text)
    return "json:" + json.dumps(result, sort_keys=True, separators=(",", ":"), default=str)


def agree(a, b, *, agreement: str, threshold: float | None = None) -> bool:
    """Whether two results agree (see the module's docstring)."""
    if agreement == EXACT:
        return _exact_key(a) == _exact_key(b)
    if agreement != SEMANTIC:
        raise ValueError(f"unknown agreement {agreement!r}")
    threshold = DEFAULT_SEMANTIC_THRESHOLD if threshold is None else threshold
    vectors_a, vectors_b = answer_vectors(a), answer_vectors(b)
    if vectors_a is not None or vectors_b is not None:
        if vectors_a is None or vectors_b is None or len(vectors_a) != len(vectors_b):
            return False
        return all(cosine(x, y) >= threshold for x, y in zip(vectors_a, vectors_b, strict=True))
    text_a, text_b = answer_text(a), answer_text(b)
    if text_a is None or text_b is None:
        return _exact_key(a) == _exact_key(b)
    return word_jaccard(text_a, text_b) >= threshold


def consensus(results: Sequence, *, agreement: str, threshold: float | None = None, required: int) -> Consensus:
    """The largest group of ``results`` agreeing with one of them, and whether it has ``required``
    members. Ties go to the group whose representative came first. ``exact`` agreement is an
    equivalence; ``semantic`` is not transitive, so each member agrees with the representative."""
    best: tuple[int, ...] = ()
    for index, candidate in enumerate(results):
        others = (
            other
            for other, result in enumerate(results)
            if other != index and agree(candidate, result, agreement=agreement, threshold=threshold)
        )
        group = (index, *others)
        if len(group) > len(best):
            best = group
    return Consensus(group=best, reached=bool(best) and len(best) >= required)


def majority(count: int) -> int:
    """The smallest number of ``count`` answers that outvotes the rest."""
    return count // 2 + 1


def verification_request(raw) -> dict:
    """A job's ``verification`` as sent, checked and completed: ``redundancy`` (2 to
    ``VERIFICATION_MAX_REDUNDANCY`` attempts), ``agreement`` (``exact``, the default, or
    ``semantic``) and ``threshold`` (for ``semantic``: the similarity, above 0 and at most 1). A
    bad value is a 422 naming the field."""
    if not isinstance(raw, dict):
        _refuse("verification", "Must be an object: redundancy, agreement, threshold.")
    unknown = sorted(set(raw) - {"redundancy", "agreement", "threshold"})
    if unknown:
        _refuse(unknown[0], "Unknown field; expected redundancy, agreement and threshold.")
    redundancy = raw.get("redundancy")
    most = settings.VERIFICATION_MAX_REDUNDANCY
    if not isinstance(redundancy, int) or isinstance(redundancy, bool) or not 2 <= redundancy <= most:
        _refuse("redundancy", f"Must be an integer from 2 to {most}.")
    agreement = raw.get("agreement", EXACT)
    if agreement not in AGREEMENTS:
        _refuse("agreement", f"Must be one of {', '.join(AGREEMENTS)}.")
    threshold = raw.get("threshold")
    if threshold is not None:
        if agreement != SEMANTIC:
            _refuse("threshold", "Only semantic agreement takes a threshold.")
        if not _is_number(threshold) or not 0 < threshold <= 1:
            _refuse("threshold", "Must be a number above 0 and at most 1.")
    elif agreement == SEMANTIC:
        threshold = DEFAULT_SEMANTIC_THRESHOLD
    return {"redundancy": redundancy, "agreement": agreement, "threshold": threshold}


def _refuse(field: str, message: str):
    raise Invalid(message, code="INVALID_VERIFICATION", errors={"verification": {field: [message]}})
