"""Queue overhead of in-cluster inference: job committed → first streamed token, minus model time.

A Dramatiq worker process (``manage.py rundramatiq --processes 1 --threads 2 --queues
inference.<model>``, Redis broker) runs the in-cluster host (``inference.worker.ClusterHost``):
it loads the model and registers as an in-cluster miner. This process then submits jobs with
``jobs.services.job_submit`` (autocommit: one statement commits the job, then its on-commit hook
enqueues the wake-up on ``inference.<model>``), subscribes to each job's channel group on the
Redis channel layer as soon as it has the id, and stamps the first ``job.token`` it receives.

Times (all on this machine's clocks):

- ``t_commit``: right after the job's INSERT statement returned, i.e. after COMMIT (the submit
  service's ``_insert_postgres`` is wrapped here to stamp it). ``from_submit_return`` repeats the
  figures from the moment ``job_submit`` returned (after the wake-up was enqueued), as a floor.
- commit → enqueued: the submit's on-commit hook (served-models lookup + Redis enqueue) returned.
- commit → claim: ``jobs.started_at`` (stamped by ``job_claim`` in the worker just before its
  claim statement) − wall-clock ``t_commit``.
- commit → running event / first token: when this process received the claim's ``job.status``
  (running) event and the first ``job.token`` event.
- model time to first token: the same model, prompt and payload run here with ``engine.execute``
  (the worker's thread count), median over ``--model-runs``: time from the call to its first
  ``on_tokens`` (the whole call with max_tokens=1 is reported too).
- overhead = commit → first token − that median: the figure with the targets.

Two scenarios: ``paced`` (each job submitted ``--gap-ms`` after the previous one completed, so
each is claimed alone) and ``idle`` (each job ``--idle-gap`` seconds after the previous one, as
for a job arriving at a quiet worker). The worker hears of a job two ways: the database's
announcement (PostgreSQL NOTIFY, relayed to its listener thread) and the Dramatiq message,
whose Redis consumer polls with a back-off up to ``dramatiq_worker_timeout``; the first to
arrive drains the queue. The job's id is chosen and its group subscribed before the submit, so
no event can be missed; a sample whose first token event has index > 0 would count as missed.

Targets: overhead p50 <= 20 ms, p99 <= 100 ms.

    .venv/bin/python bench/queue_latency.py [--iterations 200] [--idle-iterations 30] [--model tiny|smollm2]
        [--worker-timeout-ms N]  # dramatiq_worker_timeout for the worker (its idle poll cap; default 1000)
        [--trace-worker]         # the worker logs at DEBUG: commit -> claim split at dramatiq's fetch
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    CpuMeter,
    bench_env,
    emit,
    latency_summary_ms,
    load_average,
    log,
    pg_backend_pids,
    target,
)

from aitbc_site.testing.processes import ROOT, DramatiqWorker

TARGET_P50_MS, TARGET_P99_MS = 20, 100
TINY_NAME = "bench-tiny-gpt2"
SMOLLM2_NAME = "smollm2-135m"
MINER_ID = "bench-queue-worker"
PROMPT = "A miner"  # the tiny GPT-2 streams text from its first token for this prompt
TERMINAL = {"completed", "failed", "cancelled", "expired"}


@contextlib.contextmanager
def fd_stdout_to_stderr():
    """Send what is written to file descriptor 1 (by Python or native code) to stderr meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


# --- processes ------------------------------------------------------------------------


def redis_server_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-x", "redis-server"], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def worker_trace(log_path: Path, since_offset: int) -> dict:
    """message id -> wall-clock times of dramatiq's DEBUG lines in the worker log (ms resolution):
    ``fetched`` (its consumer thread pushed it onto the work queue) and ``received`` (a worker
    thread took it)."""
    import re
    from datetime import datetime

    pattern = re.compile(
        r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) DEBUG dramatiq\S*: "
        r"(?:Pushing message '([0-9a-f-]+)' onto work queue|Received message .* with id '([0-9a-f-]+)')"
    )
    out: dict = {}
    with open(log_path, "rb") as f:
        f.seek(since_offset)
        for raw in f:
            match = pattern.match(raw.decode(errors="replace"))
            if match is None:
                continue
            at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if match.group(2):
                out.setdefault(match.group(2), {})["fetched"] = at
            else:
                out.setdefault(match.group(3), {})["received"] = at
    return out


# --- the model ------------------------------------------------------------------------


def catalog_model(kind: str, data_dir: str):
    from catalog.models import CatalogModel

    if kind == "smollm2":
        return CatalogModel.objects.get(name=SMOLLM2_NAME)
    from inference.testing import build_tiny_gpt2

    directory = build_tiny_gpt2(Path(data_dir) / "models" / TINY_NAME)
    return CatalogModel.objects.create(
        name=TINY_NAME,
        task="text-generation",
        source_kind="directory",
        source=str(directory),
        default_max_tokens=16,
        max_tokens=2000,
    )


def job_payload(max_tokens: int) -> dict:
    return {"type": "inference", "prompt": PROMPT, "params": {"max_tokens": max_tokens, "temperature": 0}}


def measure_model(entry, threads: int, runs: int, max_tokens: int) -> dict:
    """The model's own time to first token, in this process, as the worker runs it: the time from
    ``engine.execute`` to its first ``on_tokens`` call, for the benchmark's job payload (the first
    streamed text can need more than one token: an incomplete UTF-8 character is held back), and
    the whole call with max_tokens=1."""
    from django.conf import settings

    from inference import engine

    engine.use_threads(threads)
    started = time.perf_counter()
    model = engine.load(
        engine.ModelSpec.from_catalog(entry),
        cache_dir=settings.MODEL_CACHE_DIR,
        device=settings.INFERENCE_DEVICE or None,
    )
    load_s = time.perf_counter() - started

    def run(tokens: int):
        first: list = []

        def on_tokens(events):
            if not first:
                first.append((time.perf_counter(), events[0]))

        t0 = time.perf_counter()
        answers = engine.execute(model, [(str(uuid.uuid4()), job_payload(tokens))], on_tokens=on_tokens)
        t1 = time.perf_counter()
        if answers[0].error is not None:
            raise SystemExit(f"the model failed: {answers[0].error.code}: {answers[0].error.message}")
        if not first:
            raise SystemExit("the model streamed no text (EOS first?): choose another prompt")
        return first[0][0] - t0, t1 - t0, first[0][1]

    for _ in range(3):
        run(max_tokens)
    to_first, first_at_token, texts = [], set(), set()
    for _ in range(runs):
        seconds, _, event = run(max_tokens)
        to_first.append(seconds)
        first_at_token.add(event.completion_tokens)
        texts.add(event.text)
    totals = [run(1)[1] for _ in range(runs)]
    return {
        "device": model.device,
        "torch_threads": threads,
        "load_s": round(load_s, 2),
        "runs": runs,
        f"execute_to_first_on_tokens (max_tokens={max_tokens}: subtracted)": latency_summary_ms(to_first),
        "execute_total (max_tokens=1)": latency_summary_ms(totals),
        "median_ms": round(statistics.median(to_first) * 1000, 3),
        "first_event_at_completion_token": sorted(first_at_token),
        "first_event_text": sorted(texts),
    }


# --- the measurement ---------------------------------------------------------------------


class Stamps:
    """Wraps the submit service's pieces to stamp the commit and the on-commit enqueue."""

    def __init__(self):
        import dramatiq

        import inference.tasks as tasks
        import jobs.services as services

        self.commit_mono = self.commit_wall = self.enqueued_mono = self.message_id = None
        insert, announce = services._insert_postgres, tasks.announce_to_workers
        broker = dramatiq.get_broker()
        enqueue = broker.enqueue

        def stamped_enqueue(message, **kwargs):
            self.message_id = message.message_id
            return enqueue(message, **kwargs)

        broker.enqueue = stamped_enqueue

        def stamped_insert(job):
            result = insert(job)
            self.commit_mono, self.commit_wall = time.monotonic(), time.time()
            return result

        def stamped_announce(model):
            announce(model)
            self.enqueued_mono = time.monotonic()

        services._insert_postgres = stamped_insert
        tasks.announce_to_workers = stamped_announce


def submit_one(stamps: Stamps, client, model: str, max_tokens: int, job_id: uuid.UUID) -> dict:
    """Submit a job whose id was chosen (and subscribed to) beforehand: a listening worker may
    claim and finish it within milliseconds of the commit."""
    from jobs.models import Job
    from jobs.services import job_submit

    stamps.commit_mono = stamps.enqueued_mono = stamps.message_id = None
    id_field = Job._meta.get_field("id")
    id_field._get_default = lambda: job_id  # the field's cached default factory, for this one job
    try:
        job = job_submit(client=client, model=model, payload=job_payload(max_tokens)).job
    finally:
        del id_field._get_default
    t_return = time.monotonic()
    return {
        "job_id": str(job.pk),
        "commit": stamps.commit_mono,
        "commit_wall": stamps.commit_wall,
        "enqueued": stamps.enqueued_mono,
        "return": t_return,
        "message_id": stamps.message_id,
    }


def read_started_at(job_ids: list[str]) -> dict:
    from jobs.models import Job

    return {str(pk): (started, status) for pk, started, status in
            Job.objects.filter(pk__in=job_ids).values_list("pk", "started_at", "status")}  # fmt: skip


async def run_scenario(
    name, *, iterations, warmup, gap, model, max_tokens, client, stamps, db, model_ms, timeout, trace_log=None
):
    """Submit jobs one at a time; ``gap()`` seconds after each one ends, the next."""
    from channels.layers import get_channel_layer

    from jobs.events import job_group

    loop = asyncio.get_running_loop()
    layer = get_channel_layer()
    channel = await layer.new_channel()
    inbox: asyncio.Queue = asyncio.Queue()

    async def pump():
        while True:
            message = await layer.receive(channel)
            inbox.put_nowait((time.monotonic(), message))

    log_offset = trace_log.stat().st_size if trace_log is not None else 0
    pump_task = asyncio.create_task(pump())
    samples, missed, timed_out, no_token, enqueue_missing = [], 0, 0, 0, 0
    try:
        for i in range(warmup + iterations):
            job_id = uuid.uuid4()
            group = job_group(job_id)
            await layer.group_add(group, channel)
            subscribed = time.monotonic()
            sub = await loop.run_in_executor(db, submit_one, stamps, client, model, max_tokens, job_id)
            first = running = None
            status = None
            deadline = time.monotonic() + timeout
            while status not in TERMINAL:
                try:
                    received, message = await asyncio.wait_for(inbox.get(), max(0.001, deadline - time.monotonic()))
                except TimeoutError:
                    break
                if message.get("job_id") != sub["job_id"]:
                    continue
                if message["type"] == "job.token" and first is None:
                    first = (received, message["index"])
                elif message["type"] == "job.status":
                    status = message.get("status")
                    if status == "running" and running is None:
                        running = received
            await layer.group_discard(group, channel)
            if status not in TERMINAL:
                timed_out += 1
                log(f"  {name}: job {sub['job_id']} not finished within {timeout}s (status event {status!r})")
            if i >= warmup:
                if first is None:
                    no_token += 1
                elif first[1] > 0:
                    missed += 1
                else:
                    samples.append({**sub, "subscribed": subscribed, "running": running, "first": first[0]})
                if sub["enqueued"] is None:
                    enqueue_missing += 1
            if i == warmup - 1:
                log(f"  {name}: warm-up done")
            elif i >= warmup and (i - warmup + 1) % 50 == 0:
                log(f"  {name}: {i - warmup + 1}/{iterations}")
            await asyncio.sleep(gap())
    finally:
        pump_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pump_task

    started = await loop.run_in_executor(db, read_started_at, [s["job_id"] for s in samples])
    claim, not_completed = [], 0
    for sample in samples:
        started_at, status = started.get(sample["job_id"], (None, None))
        if status != "completed":
            not_completed += 1
        if started_at is not None:
            claim.append(started_at.timestamp() - sample["commit_wall"])

    def span(key, since="commit"):
        return [s[key] - s[since] for s in samples if s.get(key) is not None and s.get(since) is not None]

    first_token = span("first")
    overhead = [x - model_ms / 1000 for x in first_token]
    traced = None
    if trace_log is not None:
        await asyncio.sleep(0.5)  # let the worker's log reach the file
        trace = worker_trace(trace_log, log_offset)
        fetched, received, to_claim = [], [], []
        for sample in samples:
            seen = trace.get(sample["message_id"] or "", {})
            started_at = started.get(sample["job_id"], (None, None))[0]
            if "fetched" in seen:
                fetched.append(seen["fetched"] - sample["commit_wall"])
            if "received" in seen and started_at is not None:
                to_claim.append(started_at.timestamp() - seen["received"])
            if "fetched" in seen and "received" in seen:
                received.append(seen["received"] - seen["fetched"])
        traced = {
            "matched": len(fetched),
            "commit_to_message_fetched_by_consumer": latency_summary_ms(fetched),
            "fetched_to_worker_thread_received": latency_summary_ms(received),
            "worker_thread_received_to_claim": latency_summary_ms(to_claim),
            "resolution": "1 ms (the worker's log timestamps); the worker logs at DEBUG, which costs it CPU",
        }
    return {
        "iterations": iterations,
        "warmup_discarded": warmup,
        "samples": len(samples),
        "missed_first_token (subscribed after it was sent)": missed,
        "no_token_event": no_token,
        "timed_out": timed_out,
        "not_completed": not_completed,
        "from_commit": {
            "to_enqueued (on-commit hook: served-models lookup + Redis enqueue)": latency_summary_ms(span("enqueued")),
            "to_subscribed (this process's group_add done)": latency_summary_ms(span("subscribed")),
            "to_claim (jobs.started_at, set just before the claim statement)": latency_summary_ms(claim),
            "to_running_event_received": latency_summary_ms(span("running")),
            "to_first_token_received": latency_summary_ms(first_token),
        },
        "from_submit_return": {"to_first_token_received": latency_summary_ms(span("first", "return"))},
        "overhead (first token - model median)": latency_summary_ms(overhead),
        "model_ms_subtracted": model_ms,
        **({"worker_trace (--trace-worker)": traced} if traced is not None else {}),
    }


async def run_all(args, model_name, max_tokens, client, stamps, model_ms, meter_groups, trace_log) -> dict:
    db = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-db")
    results = {}
    try:
        scenarios = [
            ("paced", args.iterations, args.warmup, lambda: args.gap_ms / 1000),
            ("idle", args.idle_iterations, 1, lambda: random.uniform(0.8, 1.2) * args.idle_gap),
        ]
        for name, iterations, warmup, gap in scenarios:
            if iterations <= 0:
                continue
            log(f"{name}: {iterations} jobs (+{warmup} warm-up)")
            meter = CpuMeter(meter_groups)
            with meter:
                result = await run_scenario(
                    name,
                    iterations=iterations,
                    warmup=warmup,
                    gap=gap,
                    model=model_name,
                    max_tokens=max_tokens,
                    client=client,
                    stamps=stamps,
                    db=db,
                    model_ms=model_ms,
                    timeout=args.job_timeout,
                    trace_log=trace_log,
                )
            result["cpu"] = meter.report(warmup + iterations)
            if name == "paced":
                result["gap_after_each_job_ms"] = args.gap_ms
            else:
                result["gap_after_each_job_s"] = f"{0.8 * args.idle_gap:g}-{1.2 * args.idle_gap:g} (uniform)"
            log(f"  overhead: {result['overhead (first token - model median)']}")
            results[name] = result
    finally:
        from django.db import connection

        await asyncio.get_running_loop().run_in_executor(db, lambda: connection.close())
        db.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200, help="measured jobs, paced scenario")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--gap-ms", type=float, default=30, help="pause after each paced job ends")
    parser.add_argument("--idle-iterations", type=int, default=30, help="measured jobs, idle scenario (0: skip)")
    parser.add_argument("--idle-gap", type=float, default=3.0, help="seconds (±20%%) between idle-scenario jobs")
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--cache-dir", default=str(ROOT / "var" / "models"), help="MODEL_CACHE_DIR (GGUF conversion)")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument(
        "--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="torch threads, each process"
    )
    parser.add_argument("--worker-threads", type=int, default=2, help="rundramatiq --threads")
    parser.add_argument("--worker-timeout-ms", type=int, default=None,
                        help="dramatiq_worker_timeout for the worker: caps its idle broker poll (dramatiq default 1000)")  # fmt: skip
    parser.add_argument("--trace-worker", action="store_true",
                        help="worker logs at DEBUG: split commit -> claim at dramatiq's fetch and dispatch")  # fmt: skip
    parser.add_argument("--model-runs", type=int, default=20)
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/14", help="DRAMATIQ_BROKER_URL, both processes")
    parser.add_argument("--job-timeout", type=float, default=30)
    parser.add_argument("--db", default="aitbc_bench")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()

    result: dict = {"benchmark": "queue_latency", "machine": {"cpus": os.cpu_count(), "loadavg_start": load_average()}}
    extra = {
        "DRAMATIQ_BROKER_URL": args.broker_url,
        "MODEL_CATALOG_CACHE_SECONDS": "0",
        "MODEL_CACHE_DIR": str(Path(args.cache_dir).resolve()),
    }
    with bench_env(args.db, keep_db=args.keep_db, extra=extra) as env:
        env.django_setup()
        from accounts.services import user_get_or_create

        with fd_stdout_to_stderr():  # stdout carries the JSON only (the tokenizer trainer writes to fd 1)
            entry = catalog_model(args.model, env.data_dir)
            log(f"model {entry.name} ({entry.source_kind}): timing it here, {args.threads} torch thread(s)")
            model_time = measure_model(entry, args.threads, args.model_runs, args.max_tokens)
        log(f"  load {model_time['load_s']} s; to first token {model_time['median_ms']} ms (median)")
        client = user_get_or_create(username="bench-queue-client")
        stamps = Stamps()
        from django.db import connection

        connection.close()

        worker_env = {
            **env.env,
            "INFERENCE_MODELS": entry.name,
            "INFERENCE_MINER_ID": MINER_ID,
            "INFERENCE_THREADS": str(args.threads),
            "INFERENCE_BATCH_SIZE": "16",
        }
        if args.worker_timeout_ms is not None:
            worker_env["dramatiq_worker_timeout"] = str(args.worker_timeout_ms)
        worker = DramatiqWorker(
            worker_env,
            queues=[f"inference.{entry.name}"],
            threads=args.worker_threads,
            log_level="DEBUG" if args.trace_worker else "INFO",
            name="worker",
        )
        try:
            # Ready once it has loaded the model and its miner is online.
            boot_s = worker.launch().wait_ready(timeout=180)
            log(f"worker up: miner {MINER_ID} online after {boot_s:.1f}s (pid {worker.pid})")
            groups = {
                "dramatiq_worker": worker.pids,
                "bench_process": lambda: [os.getpid()],
                "postgres_backends": lambda: pg_backend_pids(args.db),
                "redis_server (shared)": redis_server_pids,
            }
            scenarios = asyncio.run(
                run_all(
                    args,
                    entry.name,
                    args.max_tokens,
                    client,
                    stamps,
                    model_time["median_ms"],
                    groups,
                    worker.log_path if args.trace_worker else None,
                )
            )
        finally:
            worker.stop()

    def figure(name, q):
        block = scenarios.get(name, {}).get("overhead (first token - model median)", {})
        return block.get(f"p{q}_ms")

    result.update(
        {
            "model": {
                "name": entry.name,
                "source_kind": entry.source_kind,
                "prompt": PROMPT,
                "max_tokens": args.max_tokens,
                "temperature": 0,
            },
            "worker": {
                "command": "manage.py rundramatiq --processes 1 "
                f"--threads {args.worker_threads} --queues inference.{entry.name}",
                "broker": args.broker_url,
                "INFERENCE_THREADS": args.threads,
                "dramatiq_worker_timeout_ms": args.worker_timeout_ms or "1000 (dramatiq default)",
                "boot_to_online_s": round(boot_s, 1),
                "log_level": "DEBUG (--trace-worker)" if args.trace_worker else "WARNING",
            },
            "model_time_to_first_token": model_time,
            **scenarios,
            "targets": {
                "paced: overhead p50_ms": target(figure("paced", 50), TARGET_P50_MS, higher_is_better=False),
                "paced: overhead p99_ms": target(figure("paced", 99), TARGET_P99_MS, higher_is_better=False),
                "idle: overhead p50_ms": target(figure("idle", 50), TARGET_P50_MS, higher_is_better=False),
                "idle: overhead p99_ms": target(figure("idle", 99), TARGET_P99_MS, higher_is_better=False),
            },
            "notes": [
                "commit = right after the job's INSERT returned (before the on-commit wake-up enqueue)",
                "overhead = commit -> first job.token received here, minus the median model time to first "
                "token measured in this process with the same model, prompt and thread count",
                "paced: each job submitted gap_ms after the previous one completed (the broker consumer is "
                "still polling fast); idle: seconds apart (the consumer polls at its backed-off idle interval)",
                "MODEL_CATALOG_CACHE_SECONDS=0 in both processes: each submit re-reads the served models "
                "(after COMMIT, before the enqueue)",
            ],
        }
    )
    result["machine"]["loadavg_end"] = load_average()
    emit(result)


if __name__ == "__main__":
    main()
