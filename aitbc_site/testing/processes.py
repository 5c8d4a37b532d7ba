"""The processes of a deployment, started for real on loopback: gunicorn, daphne, Dramatiq workers,
the scheduler, and a PostgreSQL cluster and a redis-server of their own.

Every process starts in its own session with its output in a log file, and is stopped (or, by the
fault tests, killed) through its own process group: never by name.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from aitbc_site.testing.http import http_request_sync

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
logger = logging.getLogger(__name__)


_ports_handed_out: set[int] = set()
_ports_lock = threading.Lock()


def free_port() -> int:
    """A port free now and not handed out before by this process: the kernel may offer a port
    again once the socket that found it is closed, before the server it was meant for binds it,
    and two servers given one port would answer each other's requests."""
    with _ports_lock:
        while True:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            if port not in _ports_handed_out:
                _ports_handed_out.add(port)
                return port


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        if Path(f"/proc/{current}").exists():
            found.append(current)
            todo.extend(children(current))
    return found


def rss_kib(pid: int) -> int | None:
    """Resident memory of one process in KiB (None when it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def app_env(*, database_url: str, data_dir: str | Path, redis_url: str = "", broker_url: str = "", **extra) -> dict:
    """The environment a deployment's processes run with, as production runs them (the connection
    pool on, no embedded workers), with a fixed receipt key (every process signs with the same
    one) and quiet logs; what a test run sets for itself (``bin/test`` turns the pool off) does not
    leak in. ``extra`` overrides any of it."""
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH", "DEBUG")}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "aitbc_site.settings",
            "DATABASE_URL": database_url,
            "DATABASE_POOL": "true",
            "REDIS_URL": redis_url,
            "DRAMATIQ_BROKER_URL": broker_url,
            "SECRET_KEY": "loopback-deployment",
            "AITBC_DATA_DIR": str(data_dir),
            "AITBC_EMBEDDED_WORKERS": "false",
            "RECEIPT_SIGNING_KEY_HEX": "3b" * 32,
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Process:
    """One command in its own session, its output in ``log_path`` (discarded when None);
    ``start`` returns once ``ready()`` says so."""

    def __init__(self, command: list[str], *, env: dict, log_path: str | Path | None, name: str):
        self.command, self.env, self.name = command, env, name
        self.log_path = Path(log_path) if log_path is not None else None
        self.proc: subprocess.Popen | None = None
        self.launched_at = 0.0

    def start(self, timeout: float = 60) -> Process:
        self.launch()
        self.wait_ready(timeout)
        return self

    def launch(self) -> Process:
        with open(self.log_path or os.devnull, "ab") as log:
            self.proc = subprocess.Popen(
                self.command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.launched_at = time.monotonic()
        return self

    def wait_ready(self, timeout: float = 60) -> float:
        """Wait until the process is ready; the seconds since it was launched."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            exited = self.proc.poll() is not None
            if exited or time.monotonic() > deadline:
                self.kill()
                problem = f"exited with {self.proc.returncode}" if exited else f"was not ready within {timeout}s"
                raise RuntimeError(f"{self.name} {problem}:\n{self.log()}")
            time.sleep(0.1)
        logger.info("%s ready (pid %s)", self.name, self.proc.pid)
        return time.monotonic() - self.launched_at

    def ready(self) -> bool:
        return True

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> list[int]:
        return descendants(self.proc.pid) if self.alive else []

    def signal_group(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)  # the session this object started

    def kill(self) -> None:
        """SIGKILL the whole process group at once, as a crash or the OOM killer would."""
        self.signal_group(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def terminate(self, timeout: float = 30) -> float:
        """SIGTERM to the process alone, as a service manager stops it; the seconds until it (all its
        workers) exited. Whatever is left afterwards is killed."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        finally:
            self.kill()
        return time.monotonic() - started

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM to the process group, SIGKILL after ``timeout``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        self.kill()  # whatever of the group outlived its leader too
        self.proc = None

    def log(self, n: int = 8000) -> str:
        """The end of the process's output."""
        with contextlib.suppress(OSError, TypeError):
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class HttpServer(Process):
    """A server that is ready once ``GET /health/live`` answers 200 on its port."""

    def __init__(self, command: list[str], *, port: int, **kwargs):
        super().__init__(command, **kwargs)
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        try:
            return http_request_sync(self.port, "GET", "/health/live", timeout=2)[0] == 200
        except OSError:
            return False


def gunicorn_command(port: int, *, workers: int, threads: int) -> list[str]:
    """``gunicorn aitbc_site.wsgi`` with gthread workers, as production serves the REST API."""
    command = [PYTHON, "-m", "gunicorn", "aitbc_site.wsgi", "-w", str(workers), "--worker-class", "gthread"]
    command += ["--threads", str(threads), "-b", f"127.0.0.1:{port}", "--backlog", "2048", "--keep-alive", "30"]
    return [*command, "--log-level", "warning", "--graceful-timeout", "5", "--timeout", "120"]


def daphne_command(port: int) -> list[str]:
    """``daphne aitbc_site.asgi:application``: HTTP and the WebSockets, listening as deployed (with
    the backlog of ``deploy/systemd/aitbc-ws@.service``)."""
    endpoint = f"tcp:port={port}:interface=127.0.0.1:backlog=2048"
    return [PYTHON, "-m", "daphne", "-e", endpoint, "aitbc_site.asgi:application"]


def _log_path(env: dict, log_dir: str | Path | None, name: str) -> Path:
    """``<log dir>/<name>.log``; the app's data directory unless told otherwise."""
    return Path(log_dir or env["AITBC_DATA_DIR"]) / f"{name}.log"


class Gunicorn(HttpServer):
    def __init__(
        self, env: dict, *, log_dir=None, workers: int = 2, threads: int = 8, port: int | None = None, name=None
    ):
        port = port or free_port()
        self.workers, self.threads = workers, threads
        name = name or f"gunicorn-{port}"
        command = gunicorn_command(port, workers=workers, threads=threads)
        super().__init__(command, port=port, env=env, log_path=_log_path(env, log_dir, name), name=name)

    @property
    def label(self) -> str:
        return f"w{self.workers}xt{self.threads}"

    def ready(self) -> bool:
        return super().ready() and len(self.worker_pids()) >= self.workers

    def worker_pids(self) -> list[int]:
        return children(self.proc.pid) if self.alive else []


class Daphne(HttpServer):
    """daphne; with the embedded workers and ``INFERENCE_MODELS`` in its env, ready once its in-cluster
    miner also serves them, so that a test does not see that miner arrive midway."""

    SERVING = re.compile(r"in-cluster miner \S+ serves")

    def __init__(self, env: dict, *, log_dir=None, port: int | None = None, name=None):
        port = port or free_port()
        name = name or f"daphne-{port}"
        super().__init__(daphne_command(port), port=port, env=env, log_path=_log_path(env, log_dir, name), name=name)
        self.serves_models = env.get("AITBC_EMBEDDED_WORKERS") == "true" and bool(env.get("INFERENCE_MODELS"))

    def ready(self) -> bool:
        return super().ready() and (not self.serves_models or bool(self.SERVING.search(self.log(10**6))))


class DramatiqWorker(Process):
    """``manage.py rundramatiq``: the master and its worker processes, ready once each worker
    process has booted; with ``INFERENCE_MODELS`` in its env, once each has also loaded them and
    registered as the in-cluster miner ``INFERENCE_MINER_ID``."""

    BOOTED = "Worker process is ready for action"
    SERVING = "in-cluster miner {miner_id} serves"

    def __init__(
        self,
        env: dict,
        *,
        queues: list[str],
        log_dir=None,
        processes: int = 1,
        threads: int = 2,
        shutdown_timeout_ms: int = 10_000,
        log_level: str = "INFO",
        name: str = "dramatiq",
    ):
        self.processes = processes
        self.miner_id = env.get("INFERENCE_MINER_ID", "") if env.get("INFERENCE_MODELS") else ""
        command = [PYTHON, "manage.py", "rundramatiq", "--processes", str(processes), "--threads", str(threads)]
        command += ["--worker-shutdown-timeout", str(shutdown_timeout_ms), "--queues", *queues]
        # At INFO, each worker process logs that it has booted (and its inference host that it serves).
        env = {**env, "LOG_LEVEL": log_level}
        super().__init__(command, env=env, log_path=_log_path(env, log_dir, name), name=name)
        self._log_offset = 0

    def launch(self) -> DramatiqWorker:
        with contextlib.suppress(OSError):
            self._log_offset = self.log_path.stat().st_size
        return super().launch()

    def ready(self) -> bool:
        marker = self.SERVING.format(miner_id=self.miner_id) if self.miner_id else self.BOOTED
        with contextlib.suppress(OSError), open(self.log_path, "rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace").count(marker) >= self.processes
        return False


class Scheduler(Process):
    """``manage.py runscheduler``: the one process sending the periodic housekeeping messages."""

    def __init__(self, env: dict, *, log_dir=None, name: str = "scheduler"):
        command = [PYTHON, "manage.py", "runscheduler"]
        super().__init__(command, env=env, log_path=_log_path(env, log_dir, name), name=name)

    def ready(self) -> bool:
        return "scheduler running" in self.log()


class RedisServer(Process):
    """A redis-server of its own on its own port, without persistence: after a restart it starts
    empty, as a cache-only Redis does after an outage."""

    def __init__(self, *, port: int | None = None, log_path: str | Path | None = None):
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        super().__init__(command, env=dict(os.environ), log_path=log_path, name=f"redis-{self.port}")

    def ready(self) -> bool:
        return self._command(b"PING", timeout=1) == b"+PONG"

    def flush(self) -> None:
        self._command(b"FLUSHALL", timeout=10)

    def _command(self, command: bytes, *, timeout: float) -> bytes:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(command + b"\r\n")
            return sock.recv(64).strip()
        return b""


def postgres_bin_dir() -> Path | None:
    """The newest PostgreSQL server binaries installed (Debian's layout), or those on the PATH."""

    def version(path: str) -> float:
        with contextlib.suppress(ValueError):
            return float(Path(path).parent.name)
        return 0.0

    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresCluster:
    """A PostgreSQL server of its own, in a temporary data directory on its own port, for tests
    that restart it. PostgreSQL refuses to run as root: as root, its commands run as the
    ``postgres`` user, in a directory that user owns."""

    def __init__(self, *, port: int | None = None, max_connections: int = 300):
        self.bin_dir = postgres_bin_dir()
        if self.bin_dir is None:
            raise RuntimeError("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
        self.port = port or free_port()
        self.max_connections = max_connections
        self.directory = Path(tempfile.mkdtemp(prefix="aitbc-pg-"))
        self.data = self.directory / "data"
        self.log_path = self.directory / "postgres.log"
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.directory, user="postgres", group="postgres")
            self._as_owner = ["runuser", "-u", "postgres", "--"]

    def _run(self, program: str, *args: str, timeout: float = 120) -> None:
        command = [*self._as_owner, str(self.bin_dir / program), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.directory)
        if done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed:\n{done.stdout}{done.stderr}\n{self.log()}")

    def start(self) -> PostgresCluster:
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            f"-c max_connections={self.max_connections} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off"
        )
        self._run("pg_ctl", "start", "-D", str(self.data), "-o", options, "-l", str(self.log_path), "-w", "-t", "60")
        return self

    def stop(self, mode: str = "fast") -> None:
        """``fast`` ends the sessions and shuts down cleanly; ``immediate`` is a crash."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "60")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def url(self, dbname: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres"):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname, autocommit=True)

    def create_database(self, name: str, *, template: str | None = None, copy_of: str | None = None) -> str:
        """A new, empty database; a copy of ``template`` (a database of this cluster), or of what the
        database at the URL ``copy_of`` holds (a migrated schema, say: copying is faster than migrating)."""
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        if copy_of:
            dump = [str(self.bin_dir / "pg_dump"), "--no-owner", "--no-privileges", "--dbname", copy_of]
            dumped = subprocess.run(dump, check=True, capture_output=True, timeout=120)
            restore = [str(self.bin_dir / "psql"), "-q", "-v", "ON_ERROR_STOP=1", "--dbname", self.url(name)]
            subprocess.run(restore, input=dumped.stdout, check=True, capture_output=True, timeout=120)
        return self.url(name)

    def log(self, n: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        return ""

    def remove(self) -> None:
        """Stop the server (as a crash: nothing is kept) and delete its data."""
        with contextlib.suppress(RuntimeError):
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)
