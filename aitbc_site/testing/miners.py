"""HTTP miners that answer every job at once, over the real protocol: register, long-poll
``POST /v1/miners/poll``, then ``POST /v1/miners/{job_id}/result`` with the lease token. No model
runs, so thousands of jobs pass in seconds.

Run as a process of its own (the fault tests SIGKILL it mid-job), several miners per process:

    python -m aitbc_site.testing.miners --port 8000 [--port 8001] --key KEY --miner-id rig-1 --miner-id rig-2 \\
        --journal rigs.journal [--model chaos-model] [--hold-ms 20]

Each miner writes one journal line per claimed job and per answered result, flushed at once, so
what a killed process did is still on disk: ``<unix time> <miner id> claim|result <job id> <status>``,
and one line per request that failed (``error``, the route instead of a job id, the status or ``conn``,
stamped with the time the request was sent).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from aitbc_site.testing.http import CONNECTION_ERRORS, AsyncConn, build_request
from aitbc_site.testing.processes import PYTHON, Process

RESULT = {"output": "done", "usage": {"prompt_tokens": 1, "completion_tokens": 2}}
METRICS = {"duration_ms": 1, "units": 3}
# Answers after which a result is settled one way or the other; anything else is tried again.
FINAL_RESULT_STATUSES = {200, 404, 409}


class Journal:
    """Append-only lines, each written with one ``write(2)``: nothing is lost to a SIGKILL."""

    def __init__(self, path: str | Path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def record(self, miner_id: str, event: str, job_id: str, status: int | str = "-", *, at: float | None = None):
        at = time.time() if at is None else at
        os.write(self.fd, f"{at:.4f} {miner_id} {event} {job_id} {status}\n".encode())

    def close(self) -> None:
        os.close(self.fd)


@dataclass(frozen=True)
class JournalEntry:
    at: float
    miner_id: str
    event: str
    job_id: str
    status: str


def read_journals(paths) -> list[JournalEntry]:
    entries = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            parts = line.split()
            if len(parts) == 5:  # a line cut short by a kill mid-write is no answer
                entries.append(JournalEntry(float(parts[0]), *parts[1:]))
    return entries


def accepted_results(entries: list[JournalEntry]) -> Counter:
    """How many times each job's result was answered 200."""
    return Counter(e.job_id for e in entries if e.event == "result" and e.status == "200")


class Miner:
    def __init__(
        self, ports: list[int], key: str, miner_id: str, journal: Journal, *, model: str, hold_s: float, batch: int
    ):
        self.key, self.miner_id, self.model, self.journal = key, miner_id, model, journal
        self.hold_s, self.batch = hold_s, batch
        self.headers = {"X-Api-Key": key, "X-Miner-ID": miner_id}
        self._ports = itertools.cycle(ports)
        self.port = next(self._ports)
        self.conn = AsyncConn(self.port)

    def _next_server(self) -> None:
        """After a failure, talk to the next server: a proxy would send the retry elsewhere too."""
        self.conn.close()
        self.port = next(self._ports)
        self.conn = AsyncConn(self.port)

    async def _call(self, route: str, path: str, body: dict) -> tuple[int | None, bytes]:
        raw = build_request(self.port, "POST", path, self.headers, body)
        sent = time.time()
        try:
            status, answer = await asyncio.wait_for(self.conn.request(raw, reconnect=False), 90)
        except (*CONNECTION_ERRORS, TimeoutError):
            self._next_server()
            status, answer = None, b""
        if status is None or status >= 500:
            self.journal.record(self.miner_id, "error", route, status or "conn", at=sent)
        return status, answer

    async def register(self) -> None:
        capabilities = {
            "models": [self.model],
            "gpus": [{"name": "NVIDIA RTX 4090", "memory_mb": 24576}],
            "max_concurrent_jobs": 64,
        }
        while True:
            status, _ = await self._call(
                "register", "/v1/miners/register", {"capabilities": capabilities, "concurrency": 64}
            )
            if status == 200:
                return
            await asyncio.sleep(0.2)

    async def run(self, stopping: asyncio.Event, poll_wait: float) -> None:
        await self.register()
        poll = {"max_wait_seconds": poll_wait, "max_jobs": self.batch}
        while not stopping.is_set():
            status, body = await self._call("poll", "/v1/miners/poll", poll)
            if status == 204:
                continue
            if status != 200:
                await asyncio.sleep(0.1)
                continue
            polled = json.loads(body)
            for job in polled.get("jobs", [polled]):
                self.journal.record(self.miner_id, "claim", job["job_id"])
                if self.hold_s:
                    await asyncio.sleep(random.uniform(0, self.hold_s))
                self.journal.record(self.miner_id, "result", job["job_id"], await self._report(job))

    async def _report(self, job: dict) -> int:
        body = {"result": RESULT, "metrics": METRICS, "lease_token": job.get("lease_token", "")}
        for attempt in range(200):
            status, _ = await self._call("result", f"/v1/miners/{job['job_id']}/result", body)
            if status in FINAL_RESULT_STATUSES:
                return status
            await asyncio.sleep(min(1.0, 0.05 * (attempt + 1)))
        return 0


async def run_miners(
    ports: list[int],
    key: str,
    miner_ids: list[str],
    journal: Journal,
    stopping: asyncio.Event,
    *,
    model: str,
    hold_s: float = 0.0,
    batch: int = 4,
    poll_wait: float = 2.0,
) -> None:
    # Each miner starts at a server of its own, in turn.
    miners = [
        Miner(
            ports[n % len(ports) :] + ports[: n % len(ports)],
            key,
            miner_id,
            journal,
            model=model,
            hold_s=hold_s,
            batch=batch,
        )
        for n, miner_id in enumerate(miner_ids)
    ]
    await asyncio.gather(*(miner.run(stopping, poll_wait) for miner in miners))


class MinerFleet(Process):
    """This module's miners as a process of their own, journaling to ``<log dir>/<name>.journal``."""

    def __init__(
        self,
        *,
        ports: list[int],
        key: str,
        miner_ids: list[str],
        log_dir: str | Path,
        name: str,
        env: dict | None = None,
        model: str = "chaos-model",
        hold_ms: float = 20.0,
        batch: int = 4,
        poll_wait: float = 2.0,
    ):
        self.miner_ids = miner_ids
        self.journal_path = Path(log_dir) / f"{name}.journal"
        command = [PYTHON, "-m", "aitbc_site.testing.miners", "--key", key, "--journal", str(self.journal_path)]
        command += [arg for port in ports for arg in ("--port", str(port))]
        command += [arg for miner_id in miner_ids for arg in ("--miner-id", miner_id)]
        command += ["--model", model, "--hold-ms", str(hold_ms), "--batch", str(batch), "--poll-wait", str(poll_wait)]
        log_path = Path(log_dir) / f"{name}.log"
        super().__init__(command, env=env or dict(os.environ), log_path=log_path, name=name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, action="append", required=True, help="a server's port (repeatable)")
    parser.add_argument("--key", required=True, help="a miner API key")
    parser.add_argument("--miner-id", action="append", required=True, help="one miner of this process (repeatable)")
    parser.add_argument("--journal", required=True)
    parser.add_argument("--model", default="chaos-model")
    parser.add_argument("--hold-ms", type=float, default=0.0, help="hold each job up to this long before answering")
    parser.add_argument("--batch", type=int, default=4, help="max_jobs per poll")
    parser.add_argument("--poll-wait", type=float, default=2.0, help="max_wait_seconds per poll")
    args = parser.parse_args()

    async def serve():
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        journal = Journal(args.journal)
        miners = asyncio.ensure_future(
            run_miners(
                args.port,
                args.key,
                args.miner_id,
                journal,
                stopping,
                model=args.model,
                hold_s=args.hold_ms / 1000,
                batch=args.batch,
                poll_wait=args.poll_wait,
            )
        )
        await stopping.wait()
        # A polite stop: the jobs in hand are answered, no new poll is sent.
        await asyncio.wait_for(miners, args.poll_wait + 30)
        journal.close()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
