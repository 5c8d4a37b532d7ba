"""A production-shaped deployment on loopback, put under load and faults, and the report of what it
kept: the fault tests (``tests/chaos/``) and the soak benchmark (``bench/soak.py``) both run it.

``Backing`` is a PostgreSQL cluster and a redis-server of the run's own (so that they can be
restarted and taken away without touching shared servers), with the schema migrated once into a
template database. A ``Deployment`` runs on one fresh database copied from it: gunicorn (gthread
workers), optionally daphne, Dramatiq workers for housekeeping (and in-cluster inference), the
scheduler, and HTTP miners as processes of their own. A ``ChaosRun`` submits jobs through it,
injects faults while they run, waits for every job to end and reports the invariants
(``invariants``), the chain's verification and, for every fault, how long recovery took.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aitbc_site.testing import invariants
from aitbc_site.testing.load import Client, Submissions, Traffic, job_body, submit_jobs
from aitbc_site.testing.miners import MinerFleet, accepted_results, read_journals
from aitbc_site.testing.processes import (
    PYTHON,
    ROOT,
    Daphne,
    DramatiqWorker,
    Gunicorn,
    PostgresCluster,
    Process,
    RedisServer,
    Scheduler,
    app_env,
)

MODEL = "chaos-model"
CLIENT_KEYS = [f"chaos-client-key-{n}" for n in range(4)]
MINER_KEY = "chaos-miner-key"
TEMPLATE_DB = "aitbc_chaos_template"

# Short leases and frequent housekeeping, so that a dead miner's jobs come back in seconds; limits
# on (each request counted in Redis, as in production) but far above what the load sends.
SETTINGS = {
    "JOB_LEASE_SECONDS": 4,
    "HOUSEKEEPING_INTERVAL_SECONDS": 2,
    "JOB_MAX_ATTEMPTS": 10,
    "MINER_HEARTBEAT_TIMEOUT_SECONDS": 120,
    "AITBC_WELCOME_CREDITS": 1_000_000,
    "CLIENT_API_KEYS": ",".join(CLIENT_KEYS),
    "MINER_API_KEYS": MINER_KEY,
    "RATE_LIMITS_ENABLED": "true",
    "RATE_LIMIT_CLIENT": "1000000/min",
    "RATE_LIMIT_MINER": "1000000/min",
    "RATE_LIMIT_ANONYMOUS": "1000000/min",
    "ALLOWED_HOSTS": "127.0.0.1,localhost",
}


class Backing:
    """The PostgreSQL cluster and redis-server deployments run on, with a migrated template database."""

    def __init__(self, log_dir: str | Path):
        self.log_dir = Path(log_dir)
        self.postgres = PostgresCluster()
        self.redis = RedisServer(log_path=self.log_dir / "redis.log")

    def start(self) -> Backing:
        try:
            self.postgres.start()
            self.redis.start()
            env = app_env(database_url=self.postgres.create_database(TEMPLATE_DB), data_dir=self.log_dir)
            subprocess.run([PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
        except BaseException:
            self.cleanup()
            raise
        return self

    def database(self, name: str) -> str:
        """A fresh, migrated database (its url); the Redis server is emptied for it too."""
        self.redis.flush()
        return self.postgres.create_database(name, template=TEMPLATE_DB)

    def cleanup(self) -> None:
        self.redis.stop()
        self.postgres.remove()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()


@dataclass
class Layout:
    """Which processes a deployment runs."""

    gunicorns: int = 1
    gunicorn_workers: int = 2
    gunicorn_threads: int = 8
    daphnes: int = 0
    housekeeping_workers: int = 1
    # In-cluster inference workers (Dramatiq) serving ``inference_model``, which must be in the catalog.
    inference_workers: int = 0
    inference_model: str = ""
    miner_fleets: int = 2
    miners_per_fleet: int = 4
    miner_hold_ms: float = 20


@dataclass(frozen=True)
class CatalogEntry:
    """A text-generation model of the catalog, its weights in ``directory``."""

    name: str
    directory: Path
    price_per_1k_tokens: str = "1"


class Deployment:
    """The processes of ``layout`` on a fresh database of ``backing`` named ``name``, their logs in
    ``log_dir``; ``settings`` override the environment's, ``catalog`` adds models to the catalog."""

    def __init__(
        self,
        backing: Backing,
        *,
        name: str,
        layout: Layout,
        log_dir: str | Path,
        settings: dict | None = None,
        catalog: tuple[CatalogEntry, ...] = (),
    ):
        self.backing, self.name, self.layout, self.catalog = backing, name, layout, catalog
        self.log_dir = Path(log_dir)
        self.dbname = name
        self.env = app_env(
            database_url=backing.postgres.url(name),
            data_dir=self.log_dir,
            redis_url=backing.redis.url,
            broker_url=backing.redis.url,
            # While Redis is down, each server process allows its share of a rate limit.
            RATE_LIMIT_PROCESSES=layout.gunicorns * layout.gunicorn_workers + layout.daphnes,
            **{**SETTINGS, **(settings or {})},
        )
        self.gunicorns = [
            Gunicorn(
                self.env,
                log_dir=log_dir,
                workers=layout.gunicorn_workers,
                threads=layout.gunicorn_threads,
                name=f"gunicorn-{n}",
            )
            for n in range(layout.gunicorns)
        ]
        self.daphnes = [Daphne(self.env, log_dir=log_dir, name=f"daphne-{n}") for n in range(layout.daphnes)]
        self.workers = [
            DramatiqWorker(self.env, log_dir=log_dir, queues=["housekeeping"], name=f"dramatiq-{n}")
            for n in range(layout.housekeeping_workers)
        ]
        self.inference_workers = [
            DramatiqWorker(
                {
                    **self.env,
                    "INFERENCE_MODELS": layout.inference_model,
                    "INFERENCE_MINER_ID": f"cluster-{n}",
                    "INFERENCE_THREADS": "1",
                },
                log_dir=log_dir,
                queues=["housekeeping", f"inference.{layout.inference_model}"],
                threads=2,
                name=f"inference-{n}",
            )
            for n in range(layout.inference_workers)
        ]
        self.scheduler = Scheduler(self.env, log_dir=log_dir)
        self.fleets = [
            MinerFleet(
                ports=self.http_ports,
                key=MINER_KEY,
                log_dir=log_dir,
                name=f"miners-{n}",
                model=MODEL,
                miner_ids=[f"rig-{n}-{m}" for m in range(layout.miners_per_fleet)],
                hold_ms=layout.miner_hold_ms,
            )
            for n in range(layout.miner_fleets)
        ]

    @property
    def http_ports(self) -> list[int]:
        """The REST servers: gunicorn, and daphne where there is no gunicorn."""
        return [server.port for server in self.gunicorns or self.daphnes]

    @property
    def services(self) -> list[Process]:
        return [*self.gunicorns, *self.daphnes, *self.workers, *self.inference_workers, self.scheduler]

    @property
    def processes(self) -> list[Process]:
        return [*self.services, *self.fleets]

    def start(self, timeout: float = 120) -> Deployment:
        """Start the services together, then the miners once the servers answer."""
        self.backing.database(self.dbname)
        for entry in self.catalog:
            self._add_catalog_model(entry)
        try:
            for group in (self.services, self.fleets):
                for process in group:
                    process.launch()
                for process in group:
                    process.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for process in self.processes:  # all at once: each waits out its own grace period
            process.signal_group(signal.SIGTERM)
        for process in reversed(self.processes):
            process.stop()

    def connect(self):
        return self.backing.postgres.connect(self.dbname)

    def _add_catalog_model(self, entry: CatalogEntry) -> None:
        with self.connect() as conn:
            conn.execute(
                "INSERT INTO catalog_catalogmodel (name, task, source_kind, source, description, "
                "default_max_tokens, max_tokens, price_per_1k_tokens, default_params, enabled, created_at, updated_at) "
                "VALUES (%s, 'text-generation', 'directory', %s, '', 8, 64, %s, '{}', true, now(), now())",
                [entry.name, str(entry.directory), entry.price_per_1k_tokens],
            )

    def running_jobs(self, miner_ids: list[str]) -> list[str]:
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT j.id::text FROM jobs_job j JOIN miners_miner m ON m.id = j.miner_id "
                "WHERE j.status = 'running' AND m.miner_id = ANY(%s)",
                [miner_ids],
            ).fetchall()
        return [row[0] for row in rows]

    def completed_jobs(self) -> int:
        with self.connect() as conn:
            return conn.execute("SELECT count(*) FROM jobs_job WHERE status = 'completed'").fetchone()[0]

    def unsealed_items(self) -> int:
        with self.connect() as conn:
            return conn.execute("SELECT count(*) FROM explorer_pendingleaf").fetchone()[0]

    def unfinished_jobs(self) -> int:
        with self.connect() as conn:
            return conn.execute("SELECT count(*) FROM jobs_job WHERE status IN ('queued', 'running')").fetchone()[0]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@dataclass
class Fault:
    """One fault injected: when it began (unix time), when the faulted part was back, the jobs the
    faulted process held when it died, and whether it was an outage of a server every process uses."""

    kind: str
    target: str
    began: float
    back: float = 0.0
    held: list[str] = field(default_factory=list)
    outage: bool = False

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "target": self.target,
            "outage_s": round(self.back - self.began, 3),
            "jobs_held": len(self.held),
        }


class ChaosRun:
    """Load, faults and the report of one run against a deployment."""

    def __init__(self, deployment: Deployment, *, clients: int = 16, ports: list[int] | None = None):
        """``clients`` send their requests to ``ports`` (the deployment's REST servers), each
        starting at its own and moving to the next after a failure."""
        self.deployment = deployment
        self.traffic = Traffic()
        self.submissions = Submissions()
        self.faults: list[Fault] = []
        ports = ports or deployment.http_ports
        self.clients = [
            Client(ports[n % len(ports) :] + ports[: n % len(ports)], CLIENT_KEYS[n % len(CLIENT_KEYS)], self.traffic)
            for n in range(clients)
        ]
        self.drained_s: float | None = None

    # --- load ------------------------------------------------------------------------------

    async def submit(self, count: int, *, rate: float | None = None, body: Callable[[int], dict] | None = None):
        """Submit ``count`` jobs (``body(n)``; by default a paid job for the HTTP miners' model)."""
        body = body or (lambda n: job_body(MODEL, n))
        await submit_jobs(self.clients, self.submissions, count=count, rate=rate, body=body)

    async def wait_for_completions(self, count: int, timeout: float = 120) -> None:
        """Until ``count`` jobs have completed (faults are injected into a system that is working)."""
        deadline = time.monotonic() + timeout
        while await asyncio.to_thread(self.deployment.completed_jobs) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {count} jobs completed within {timeout}s")
            await asyncio.sleep(0.1)

    async def drain(self, timeout: float = 120) -> None:
        """Wait until no job is queued or running any more."""
        started = time.monotonic()
        while await asyncio.to_thread(self.deployment.unfinished_jobs):
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"jobs still unfinished {timeout}s after the load ended")
            await asyncio.sleep(0.2)
        self.drained_s = time.monotonic() - started

    async def sealed(self, timeout: float = 60) -> None:
        """Wait until housekeeping has sealed every receipt and ledger transaction stored so far."""
        started = time.monotonic()
        while await asyncio.to_thread(self.deployment.unsealed_items):
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"items still unsealed {timeout}s after the jobs were drained")
            await asyncio.sleep(0.2)

    # --- faults ------------------------------------------------------------------------------

    async def kill_web_worker(self, server: Gunicorn) -> Fault:
        """SIGKILL one of gunicorn's workers; back when the master has replaced it and it answers."""
        victim = random.choice(server.worker_pids())
        fault = Fault("SIGKILL web worker", server.name, time.time())
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
        while True:
            workers = server.worker_pids()
            if victim not in workers and len(workers) >= server.workers and await asyncio.to_thread(server.ready):
                break
            await asyncio.sleep(0.05)
        fault.back = time.time()
        self.faults.append(fault)
        return fault

    async def kill_holder(self, process: Process, miner_ids: list[str], kind: str, timeout: float = 30) -> Fault:
        """SIGKILL a process once its miners (``miner_ids``, if any) hold jobs, mid-job, then start it
        again as a supervisor would; back when it is ready again."""
        deadline = time.monotonic() + timeout
        while miner_ids and not await asyncio.to_thread(self.deployment.running_jobs, miner_ids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{process.name} held no job within {timeout}s")
            await asyncio.sleep(0.02)
        fault = Fault(kind, process.name, time.time())
        await asyncio.to_thread(process.kill)
        fault.held = await asyncio.to_thread(self.deployment.running_jobs, miner_ids)
        self.faults.append(fault)
        process.launch()
        await asyncio.to_thread(process.wait_ready, 180)
        fault.back = time.time()
        return fault

    async def kill_miners(self, fleet: MinerFleet) -> Fault:
        return await self.kill_holder(fleet, fleet.miner_ids, "SIGKILL HTTP miners")

    async def kill_inference_worker(self, worker: DramatiqWorker) -> Fault:
        return await self.kill_holder(worker, [worker.miner_id], "SIGKILL Dramatiq worker")

    async def restart_postgres(self, mode: str = "fast") -> Fault:
        fault = Fault(f"PostgreSQL restart ({mode})", "postgres", time.time(), outage=True)
        await asyncio.to_thread(self.deployment.backing.postgres.restart, mode)
        fault.back = time.time()
        self.faults.append(fault)
        return fault

    async def redis_outage(self, seconds: float) -> Fault:
        redis = self.deployment.backing.redis
        fault = Fault(f"Redis outage ({seconds:g} s)", redis.name, time.time(), outage=True)
        await asyncio.to_thread(redis.stop)
        await asyncio.sleep(seconds)
        await asyncio.to_thread(redis.start)
        fault.back = time.time()
        self.faults.append(fault)
        return fault

    # --- the report ---------------------------------------------------------------------------

    def report(self) -> dict:
        journal = read_journals(fleet.journal_path for fleet in self.deployment.fleets if fleet.journal_path.exists())
        results = accepted_results(journal)
        with self.deployment.connect() as conn:
            checks = invariants.database_invariants(
                conn, accepted=self.submissions.accepted_ids, results_accepted=results
            )
            faults = sorted(self.faults, key=lambda fault: fault.began)
            recoveries = []
            for n, fault in enumerate(faults):
                # Requests are blamed on this fault from the end of the one before to the start of the next.
                since = faults[n - 1].back if n else 0.0
                until = faults[n + 1].began if n + 1 < len(faults) else float("inf")
                recoveries.append(self._recovery(conn, fault, journal, window=(since, until)))
        chain_ok, chain_output = invariants.chain_verifies(self.deployment.env)
        # Sealing ran above: the sealed counts are final now.
        with self.deployment.connect() as conn:
            for name in ("receipts_not_sealed", "ledger_transactions_not_sealed"):
                checks[name] = conn.execute(invariants.CHECKS[name]).fetchone()[0]
        miner_errors = [e for e in journal if e.event == "error"]
        return {
            "invariants": checks,
            "violations": invariants.violations(checks),
            "chain_verifies": chain_ok,
            "chain_output": chain_output.strip().splitlines()[-3:],
            "submissions": {
                "accepted": len(self.submissions.accepted),
                "refused": self.submissions.refused[:5],
                "unanswered": self.submissions.unanswered,
            },
            "client_traffic": self.traffic.summary(),
            "miner_request_failures": len(miner_errors),
            "results_accepted": sum(results.values()),
            "faults": recoveries,
            "drained_s": None if self.drained_s is None else round(self.drained_s, 2),
        }

    def _recovery(self, conn, fault: Fault, journal, *, window: tuple[float, float]) -> dict:
        """How long the fault cost: until every job the dead process held completed elsewhere; until
        a replaced web worker answers; after an outage, until a job is accepted, a job completes
        and housekeeping seals a block again. Also the requests the server failed, sent while the part
        was out (since the previous fault was over) and after it was back (before the next fault)."""
        out = fault.as_dict()
        if fault.held:
            last = conn.execute(
                "SELECT max(extract(epoch FROM completed_at)), count(*) FILTER (WHERE status <> 'completed') "
                "FROM jobs_job WHERE id = ANY(%s::uuid[])",
                [fault.held],
            ).fetchone()
            requeued = conn.execute(
                "SELECT max(extract(epoch FROM created_at)) FROM jobs_failedattempt "
                "WHERE job_id = ANY(%s::uuid[]) AND created_at >= to_timestamp(%s)",
                [fault.held, fault.began],
            ).fetchone()[0]
            out["held_jobs_not_completed"] = last[1]
            out["held_jobs_requeued_s"] = round(float(requeued) - fault.began, 3) if requeued is not None else None
            out["recovery_s"] = round(float(last[0]) - fault.began, 3) if last[0] is not None else None
        elif fault.outage:
            first_accept = min((t for t in self.submissions.accepted.values() if t >= fault.back), default=None)
            first_completion = conn.execute(
                "SELECT min(extract(epoch FROM completed_at)) FROM jobs_job WHERE completed_at >= to_timestamp(%s)",
                [fault.back],
            ).fetchone()[0]
            first_block = conn.execute(
                "SELECT min(extract(epoch FROM timestamp)) FROM explorer_block WHERE timestamp >= to_timestamp(%s)",
                [fault.back],
            ).fetchone()[0]
            moments = [first_accept, first_completion, first_block]
            out["first_after_back_s"] = {
                name: None if moment is None else round(float(moment) - fault.back, 3)
                for name, moment in zip(("job_accepted", "job_completed", "block_sealed"), moments, strict=True)
            }
            out["recovery_s"] = round(max(float(m) for m in moments) - fault.began, 3) if None not in moments else None
        else:
            out["recovery_s"] = round(fault.back - fault.began, 3)
        failed = [a.sent for a in self.traffic.attempts if a.failed] + [e.at for e in journal if e.event == "error"]
        since, until = window
        out["requests_failed_while_out"] = sum(1 for sent in failed if since <= sent < fault.back)
        out["requests_failed_after_back"] = sum(1 for sent in failed if fault.back <= sent < until)
        return out
