"""Shared helpers for the benchmarks: a throw-away PostgreSQL database, the app's environment,
in-process Django, CPU accounting and statistics. The processes a benchmark starts (gunicorn,
daphne, Dramatiq workers) and the cheap HTTP clients come from ``aitbc_site.testing``, which the
tests use too.

Nothing here talks to anything but 127.0.0.1. Every process a benchmark starts is stopped by
its own id when the benchmark ends.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The project root goes first: bench/inference.py would otherwise shadow the ``inference`` app.
with contextlib.suppress(ValueError):
    sys.path.remove(str(ROOT))
sys.path.insert(0, str(ROOT))

from aitbc_site.testing.processes import PYTHON, app_env  # noqa: E402

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
MODEL = "llama3.2"
SUBMIT_BODY = {"payload": {"type": "inference", "prompt": "hi", "model": MODEL}, "ttl_seconds": 900}
# A fixed receipt-signing key, so that every process of a run signs with the same key.
SIGNING_KEY_HEX = "3b" * 32


def log(*parts) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *parts, file=sys.stderr, flush=True)


def emit(result: dict) -> None:
    """The benchmark's one JSON object, on stdout."""
    print(json.dumps(result, indent=2, default=str), flush=True)


# --- statistics ------------------------------------------------------------------------


def percentile(values, q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1
    return ordered[rank]


def latency_summary_ms(seconds: list[float]) -> dict:
    ms = [s * 1000 for s in seconds]
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


def target(value, goal, *, higher_is_better: bool) -> dict:
    met = None if value is None else (value >= goal if higher_is_better else value <= goal)
    return {"value": value, "target": (">= " if higher_is_better else "<= ") + str(goal), "met": met}


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# --- CPU accounting ----------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of one process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def machine_cpu() -> tuple[float, float, float]:
    """(busy, total, steal) CPU seconds of the whole machine since boot, from /proc/stat.
    ``busy`` excludes steal (time the hypervisor gave to other guests)."""
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    steal = values[7] if len(values) > 7 else 0
    total = sum(values[:8])
    return (total - idle - steal) / _CLK_TCK, total / _CLK_TCK, steal / _CLK_TCK


class CpuMeter:
    """CPU seconds used during a window by named groups of processes, and by the whole machine.

    ``groups`` maps a name to a callable returning pids (evaluated at start and at stop, so
    pool connections opened mid-run are caught at stop; their CPU before the start counts
    for them, which only over-states).
    """

    def __init__(self, groups: dict):
        self.groups = groups

    def __enter__(self):
        self.t0 = time.monotonic()
        self.m0 = machine_cpu()
        self.start = {name: {pid: proc_cpu_seconds(pid) for pid in get()} for name, get in self.groups.items()}
        return self

    def __exit__(self, *exc):
        self.elapsed = time.monotonic() - self.t0
        m1 = machine_cpu()
        self.machine_busy = m1[0] - self.m0[0]
        self.machine_total = m1[1] - self.m0[1]
        self.machine_steal = m1[2] - self.m0[2]
        self.used = {}
        for name, get in self.groups.items():
            pids = set(get()) | set(self.start[name])
            self.used[name] = sum(max(0.0, proc_cpu_seconds(p) - self.start[name].get(p, 0.0)) for p in pids)

    def report(self, requests: int | None = None) -> dict:
        ncpu = os.cpu_count() or 1
        out = {
            "window_s": round(self.elapsed, 2),
            "machine_busy_pct_of_all_cores": round(100 * self.machine_busy / max(self.machine_total, 1e-9), 1),
            "steal_pct_of_all_cores": round(100 * self.machine_steal / max(self.machine_total, 1e-9), 1),
            "cores_used": {name: round(sec / self.elapsed, 2) for name, sec in self.used.items()},
        }
        ours = sum(self.used.values())
        out["cores_used"]["other_processes_on_machine"] = round(max(0.0, self.machine_busy - ours) / self.elapsed, 2)
        out["cores_total"] = ncpu
        if requests:
            out["cpu_ms_per_request"] = {name: round(1000 * sec / requests, 2) for name, sec in self.used.items()}
        return out


def pg_backend_pids(db_name: str) -> list[int]:
    """PostgreSQL backends connected to ``db_name`` (other than this query's own)."""
    import psycopg

    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [db_name]
        ).fetchall()
    return [r[0] for r in rows]


# --- the database and the app's environment ------------------------------------------


def _admin_connect():
    import psycopg

    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True)


class BenchEnv:
    """A fresh PostgreSQL database, a temporary data dir, and the environment the app runs with."""

    def __init__(
        self, db_name: str = "aitbc_bench", *, pool: bool = True, throttle: bool = False, extra: dict | None = None
    ):
        if not db_name.replace("_", "").isalnum():
            raise ValueError("database name must be alphanumeric/underscore")
        self.db_name = db_name
        self.data_dir = tempfile.mkdtemp(prefix="aitbc-bench-")
        self.env = app_env(
            database_url=f"postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{db_name}",
            data_dir=self.data_dir,
            redis_url="redis://127.0.0.1:6379/0",
            SECRET_KEY="bench",
            DATABASE_POOL="true" if pool else "false",
            RECEIPT_SIGNING_KEY_HEX=SIGNING_KEY_HEX,
            RATE_LIMIT_KEY_PREFIX=f"aitbc-bench:{uuid.uuid4().hex}",
        )
        if throttle:
            # Limits on, but far above what the benchmark sends: the per-request Redis counter is paid.
            self.env.update(
                {
                    "RATE_LIMITS_ENABLED": "true",
                    "RATE_LIMIT_CLIENT": "100000000/min",
                    "RATE_LIMIT_MINER": "100000000/min",
                    "RATE_LIMIT_ADMIN": "100000000/min",
                }
            )
        else:
            self.env["RATE_LIMITS_ENABLED"] = "false"
        if extra:
            self.env.update({k: str(v) for k, v in extra.items()})

    # database lifecycle
    def create(self) -> BenchEnv:
        self.drop_db()
        with _admin_connect() as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        log(f"created database {self.db_name}; migrating")
        started = time.monotonic()
        subprocess.run([PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=self.env, check=True)
        log(f"migrated in {time.monotonic() - started:.1f}s")
        return self

    def drop_db(self) -> None:
        with _admin_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    def cleanup(self, keep_db: bool = False) -> None:
        if not keep_db:
            with contextlib.suppress(Exception):
                self.drop_db()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def psql_connect(self):
        import psycopg

        return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=self.db_name, autocommit=True)

    # in-process Django
    def django_setup(self, **overrides) -> None:
        os.environ.update(self.env)
        os.environ.update({k: str(v) for k, v in overrides.items()})
        import django

        django.setup()


def django_setup_from_env(env: dict) -> None:
    """For child processes: adopt the parent's app environment and set Django up."""
    os.environ.update(env)
    import django

    django.setup()


# --- app fixtures (in-process, after django_setup) -------------------------------------


def make_key(username: str, scope: str) -> str:
    from accounts.services import api_key_create, user_get_or_create

    return api_key_create(user=user_get_or_create(username=username), scope=scope).raw_key


def make_miner(
    owner_username: str, miner_id: str, *, max_concurrent_jobs: int = 1024, models=(MODEL,), vram_gb: float = 24.0
):
    from accounts.services import user_get_or_create
    from miners.capabilities import Capabilities
    from miners.services import miner_register

    caps = Capabilities(
        models=tuple(models),
        gpu_name="NVIDIA RTX 4090",
        vram_gb=vram_gb,
        cuda_version="12.4",
        max_concurrent_jobs=max_concurrent_jobs,
        raw={
            "gpus": [{"name": "NVIDIA RTX 4090", "memory_mb": int(vram_gb * 1024)}],
            "cuda": "12.4",
            "models": list(models),
            "max_concurrent_jobs": max_concurrent_jobs,
        },
    )
    miner, _ = miner_register(owner=user_get_or_create(username=owner_username), miner_id=miner_id, capabilities=caps)
    return miner


def prefill_jobs(n: int, *, client_username: str = "bench-client", batch: int = 2000) -> int:
    """Queue ``n`` jobs fast: one through ``jobs.services.job_submit`` (the template, so every field is
    what the service would write), the rest bulk-inserted as copies with fresh ids and times."""
    from datetime import timedelta

    from django.db import connection

    from accounts.services import user_get_or_create
    from jobs.models import Job
    from jobs.services import job_submit

    client = user_get_or_create(username=client_username)
    template = job_submit(client=client, model=MODEL, payload=dict(SUBMIT_BODY["payload"]), ttl_seconds=900).job
    fields = [f.attname for f in Job._meta.concrete_fields]
    base = {name: getattr(template, name) for name in fields}
    rank_offset = template.created_at - template.rank_at
    made = 1
    while made < n:
        rows = []
        for _ in range(min(batch, n - made)):
            created = template.created_at + timedelta(microseconds=made)
            rows.append(
                Job(
                    **{
                        **base,
                        "id": uuid.uuid4(),
                        "created_at": created,
                        "rank_at": created - rank_offset,
                        "expires_at": created + timedelta(seconds=template.ttl_seconds),
                    }
                )
            )
            made += 1
        Job.objects.bulk_create(rows)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Job._meta.db_table}")
    return made


# --- wrk --------------------------------------------------------------------------------


def wrk_path() -> str | None:
    return shutil.which("wrk")


def ensure_wrk() -> str | None:
    """wrk if present; otherwise try the Debian package once (we run as root here)."""
    path = wrk_path()
    if path or os.geteuid() != 0 or not shutil.which("apt-get"):
        return path
    log("wrk not found; trying apt-get install -y wrk")
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return wrk_path()


@contextlib.contextmanager
def bench_env(db_name: str, *, keep_db: bool = False, **kwargs):
    env = BenchEnv(db_name, **kwargs).create()
    try:
        yield env
    finally:
        env.cleanup(keep_db=keep_db)
