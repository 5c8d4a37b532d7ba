"""Soak: a deployment under mixed load for ``--minutes`` (30) with a fault injected every
``--fault-every`` seconds (60), then the invariants.

The deployment runs on a PostgreSQL cluster and a redis-server of its own (``aitbc_site.testing``):
gunicorn (2 gthread workers), one daphne, a Dramatiq housekeeping worker, an in-cluster inference
worker serving a tiny GPT-2 (``--no-inference`` leaves it out), the scheduler and two processes of
four HTTP miners each. The load: ``--rate`` (10) job submissions per second, one in ten for the
tiny model and the rest for the HTTP miners, each paid from escrow and retried under its
Idempotency-Key until accepted; readers fetching jobs, results, receipts, job lists, the explorer
and the stats (``--readers``, each every ``--read-pause`` seconds); and dashboard sockets on daphne,
reconnecting when closed. The faults, in turn: SIGKILL of a gunicorn worker, of an HTTP miner
process mid-job, of the inference (or housekeeping) Dramatiq worker mid-job, a PostgreSQL restart,
a Redis outage of ``--redis-outage`` seconds (5).

Reported: the non-429 success rate of the clients' requests (goal >= 99.9 %), every fault with its
recovery, the resident memory of every process sampled every ``--sample-every`` seconds (goal:
flat; a process replaced by a fault starts a new series), and the invariants: no accepted job lost,
completions, receipts and settlements exactly once, the ledger conserved, the chain verifying.

    .venv/bin/python bench/soak.py [--minutes 30] [--rate 10] [--fault-every 60]   # --minutes 2 for a try
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, load_average, log, target

from aitbc_site.testing.chaos import CLIENT_KEYS, MODEL, Backing, CatalogEntry, ChaosRun, Deployment, Layout
from aitbc_site.testing.load import Client, job_body, read_around
from aitbc_site.testing.processes import rss_kib

TARGET_SUCCESS_RATE = 0.999
TINY = "soak-tiny-gpt2"
FAULTS = ["web worker", "HTTP miners", "Dramatiq worker", "PostgreSQL restart", "Redis outage"]


class MemorySampler:
    """Resident memory of every process of the deployment, sampled over time, per process."""

    def __init__(self, deployment: Deployment):
        self.deployment = deployment
        self.series: dict[tuple[str, int], list[tuple[float, int]]] = {}

    def sample(self, elapsed: float) -> None:
        for process in self.deployment.processes:
            for pid in process.pids():
                kib = rss_kib(pid)
                if kib is not None:
                    self.series.setdefault((process.name, pid), []).append((elapsed, kib))

    def report(self, *, warmup_s: float) -> list[dict]:
        out = []
        for (name, pid), samples in sorted(self.series.items()):
            after = [(t, kib) for t, kib in samples if t >= warmup_s] or samples
            out.append(
                {
                    "process": name,
                    "pid": pid,
                    "from_s": round(samples[0][0]),
                    "to_s": round(samples[-1][0]),
                    "rss_mib_first": round(samples[0][1] / 1024, 1),
                    "rss_mib_after_warmup": round(after[0][1] / 1024, 1),
                    "rss_mib_last": round(samples[-1][1] / 1024, 1),
                    "rss_mib_max": round(max(kib for _, kib in samples) / 1024, 1),
                    "growth_mib_per_hour_after_warmup": _slope_mib_per_hour(after),
                }
            )
        return out


def _slope_mib_per_hour(samples: list[tuple[float, int]]) -> float | None:
    """Least-squares slope of the samples, MiB per hour (None under a minute of samples)."""
    if len(samples) < 3 or samples[-1][0] - samples[0][0] < 60:
        return None
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_m = sum(kib for _, kib in samples) / n
    num = sum((t - mean_t) * (kib - mean_m) for t, kib in samples)
    den = sum((t - mean_t) ** 2 for t, _ in samples)
    return round(num / den * 3600 / 1024, 1)


async def dashboard_sockets(ws_url: str, count: int, stopping: asyncio.Event, counts: dict) -> None:
    """``count`` dashboard sockets reading every frame, each opened again whenever it closes."""
    from websockets.asyncio.client import connect

    async def one():
        while not stopping.is_set():
            try:
                async with connect(f"{ws_url}/ws/dashboard/", additional_headers={"X-Api-Key": CLIENT_KEYS[0]}) as ws:
                    counts["opened"] += 1
                    while not stopping.is_set():
                        try:
                            await asyncio.wait_for(ws.recv(), 1)
                            counts["frames"] += 1
                        except TimeoutError:
                            continue
            except Exception:  # refused or closed (a restart, an outage): open it again
                counts["reopened"] += 1
                await asyncio.sleep(1)

    await asyncio.gather(*(one() for _ in range(count)))


async def inject(chaos: ChaosRun, kind: str, *, redis_outage_s: float) -> None:
    deployment = chaos.deployment
    if kind == "web worker":
        await chaos.kill_web_worker(deployment.gunicorns[0])
    elif kind == "HTTP miners":
        await chaos.kill_miners(random.choice(deployment.fleets))
    elif kind == "Dramatiq worker":
        if deployment.inference_workers:
            await chaos.kill_inference_worker(deployment.inference_workers[0])
        else:
            await chaos.kill_holder(deployment.workers[0], [], "SIGKILL Dramatiq worker")
    elif kind == "PostgreSQL restart":
        await chaos.restart_postgres()
    else:
        await chaos.redis_outage(redis_outage_s)


async def soak(chaos: ChaosRun, sampler: MemorySampler, args) -> dict:
    deployment = chaos.deployment
    stopping = asyncio.Event()
    started = time.monotonic()
    duration = args.minutes * 60
    jobs = int(duration * args.rate)

    def body(n: int) -> dict:
        if deployment.inference_workers and n % 10 == 0:
            return job_body(TINY, n, price=None, max_tokens=8)
        return job_body(MODEL, n)

    async def sample():
        while not stopping.is_set():
            sampler.sample(time.monotonic() - started)
            await asyncio.sleep(args.sample_every)

    async def faults():
        for kind in itertools.cycle(FAULTS):
            await asyncio.sleep(args.fault_every)
            if time.monotonic() - started > duration - args.fault_every / 2:
                return
            log(f"{time.monotonic() - started:6.0f}s  fault: {kind}")
            try:
                await inject(chaos, kind, redis_outage_s=args.redis_outage)
            except TimeoutError as error:  # the worker held no job meanwhile: no mid-job kill this time
                skipped.append(f"{kind}: {error}")

    skipped: list[str] = []
    readers = [Client(deployment.http_ports, CLIENT_KEYS[-1], chaos.traffic) for _ in range(args.readers)]
    socket_counts = {"opened": 0, "reopened": 0, "frames": 0}
    background = [
        asyncio.ensure_future(sample()),
        asyncio.ensure_future(read_around(readers, chaos.submissions, stopping, pause_s=args.read_pause)),
        asyncio.ensure_future(dashboard_sockets(deployment.daphnes[0].ws_url, args.sockets, stopping, socket_counts)),
    ]
    fault_loop = asyncio.ensure_future(faults())
    await chaos.submit(jobs, rate=args.rate, body=body)
    await fault_loop
    log(f"{time.monotonic() - started:6.0f}s  load done; draining")
    await chaos.drain(timeout=600)
    stopping.set()
    sampler.sample(time.monotonic() - started)
    await asyncio.gather(*background, return_exceptions=True)
    return {
        "seconds": round(time.monotonic() - started, 1),
        "jobs_submitted": jobs,
        "faults_skipped": skipped,
        "sockets": socket_counts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=10, help="job submissions per second")
    parser.add_argument("--fault-every", type=float, default=60, help="seconds between faults")
    parser.add_argument("--redis-outage", type=float, default=5, help="seconds Redis is down")
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--read-pause", type=float, default=0.5)
    parser.add_argument("--sockets", type=int, default=4, help="dashboard sockets on daphne")
    parser.add_argument("--sample-every", type=float, default=10, help="seconds between memory samples")
    parser.add_argument("--no-inference", action="store_true", help="no in-cluster inference worker")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs (their path is printed)")
    args = parser.parse_args()

    log_dir = Path(tempfile.mkdtemp(prefix="aitbc-soak-"))
    result: dict = {"benchmark": "soak", "machine": {"cpus": os.cpu_count(), "loadavg_start": load_average()}}
    result["settings"] = {k: v for k, v in vars(args).items() if k != "keep_logs"}
    layout = Layout(daphnes=1, inference_workers=0 if args.no_inference else 1, inference_model=TINY)
    catalog = ()
    if not args.no_inference:
        from inference.testing import build_tiny_gpt2

        catalog = (CatalogEntry(TINY, build_tiny_gpt2(log_dir / TINY)),)
    try:
        with Backing(log_dir) as backing:
            deployment = Deployment(backing, name="soak", layout=layout, log_dir=log_dir, catalog=catalog)
            with deployment:
                log(f"deployment up; logs in {log_dir}")
                chaos = ChaosRun(deployment)
                sampler = MemorySampler(deployment)
                result["run"] = asyncio.run(soak(chaos, sampler, args))
                report = chaos.report()
                result["memory"] = sampler.report(warmup_s=min(300, args.minutes * 60 / 5))
    finally:
        if not args.keep_logs:
            shutil.rmtree(log_dir, ignore_errors=True)
    rate = report["client_traffic"]["non_429_success_rate"]
    result["targets"] = {
        "non_429_success_rate": target(rate, TARGET_SUCCESS_RATE, higher_is_better=True),
        "invariants_hold": {"value": not report["violations"] and report["chain_verifies"], "target": True},
    }
    result["report"] = report
    result["machine"]["loadavg_end"] = load_average()
    emit(result)
    log(json.dumps(result["targets"]))


if __name__ == "__main__":
    main()
