"""Real processes for tests about what a deployment meets: daphne and gunicorn serving the app,
a redis-server and a PostgreSQL cluster of the test's own (which the test may stop and start
without touching the shared servers).
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from glob import glob
from pathlib import Path

import httpx
import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def current_database_url() -> str:
    """The URL of the database this test run uses (the servers must see the test's rows)."""
    database = connection.settings_dict
    password = f":{database['PASSWORD']}" if database["PASSWORD"] else ""
    return f"postgres://{database['USER']}{password}@{database['HOST']}:{database['PORT']}/{database['NAME']}"


def wait_until(condition, *, timeout: float, interval: float = 0.05, message: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message or f"not true within {timeout} s")
        time.sleep(interval)


class Server:
    """daphne or gunicorn serving ``aitbc_site`` on a port of its own, its output in a log file."""

    def __init__(self, kind: str, *, env: dict, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.log_path = log_path
        if kind == "daphne":
            command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port)]
            command += ["aitbc_site.asgi:application"]
        elif kind == "gunicorn":
            command = [sys.executable, "-m", "gunicorn", "aitbc_site.wsgi", "-b", f"127.0.0.1:{self.port}"]
            command += ["-w", "2", "--worker-class", "gthread", "--threads", "4"]
        else:
            raise ValueError(kind)
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_until(self._answers, timeout=60, message=f"{kind} did not start:\n{self.log()}")
        except BaseException:
            self.kill()
            raise

    def _answers(self) -> bool:
        assert self.process.poll() is None, f"the server exited:\n{self.log()}"
        try:
            return httpx.get(f"{self.url}/health/live", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_bytes().decode(errors="replace")[-8000:]

    def terminate(self, timeout: float = 30) -> float:
        """SIGTERM; the seconds until the process (all its workers) exited."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        finally:
            self.kill()
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL the server's process group: workers a master left behind go too."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def server_env(tmp_path: Path, *, database_url: str | None = None, **extra: str) -> dict:
    """The environment of a production-shaped server process on the test database: debug off,
    no embedded workers, no broker (the stub broker drops the wake-up messages)."""
    env = {
        **os.environ,
        "DEBUG": "false",
        "SECRET_KEY": "test-only-secret-key",
        "DATABASE_URL": database_url or current_database_url(),
        "AITBC_DATA_DIR": str(tmp_path),
        "AITBC_EMBEDDED_WORKERS": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "INFO",
    }
    env.pop("DRAMATIQ_BROKER_URL", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(extra)
    return env


class RedisServer:
    """A redis-server on a port of its own, which the test may stop and start again."""

    def __init__(self):
        if shutil.which("redis-server") is None:
            pytest.skip("needs redis-server on PATH (CI has it)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._answers, timeout=10, message="redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


class PostgresCluster:
    """A PostgreSQL cluster of the test's own, on its own port and data directory.

    PostgreSQL refuses to run as root: as root, its commands run as the ``postgres`` user, in a
    temporary directory that user owns.
    """

    def __init__(self):
        found = sorted(glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not found:
            pytest.skip("needs PostgreSQL's server binaries under /usr/lib/postgresql (CI has them)")
        self.bin = Path(found[-1]).parent
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.directory = Path(tempfile.mkdtemp(prefix="aitbc-pg-"))
        if self.as_postgres:
            shutil.chown(self.directory, "postgres", "postgres")
        self.data = self.directory / "data"
        self.port = free_port()
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, program: str, *args: str) -> None:
        command = [*self.as_postgres, str(self.bin / program), *args]
        subprocess.run(command, check=True, capture_output=True, timeout=60, cwd=self.directory)

    def _pg_ctl(self, action: str, *args: str) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.directory / "postgres.log")
        self._run("pg_ctl", action, "-D", str(self.data), "-w", "-l", log, "-o", options, *args)

    def start(self) -> None:
        self._pg_ctl("start")

    def restart(self) -> None:
        """A fast restart: open sessions are ended, as in a real failover or upgrade."""
        self._pg_ctl("restart", "-m", "fast")

    def stop(self) -> None:
        self._run("pg_ctl", "stop", "-D", str(self.data), "-w", "-m", "immediate")

    def create_database(self, name: str, *, copy_of: str) -> str:
        """A new database holding what the database at ``copy_of`` holds (a migrated schema, say:
        copying it is faster than migrating again)."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        dump = subprocess.run(
            [str(self.bin / "pg_dump"), "--no-owner", "--no-privileges", "--dbname", copy_of],
            check=True,
            capture_output=True,
            timeout=60,
        )
        restore = [str(self.bin / "psql"), "-q", "-v", "ON_ERROR_STOP=1", "--dbname", self.url(name)]
        subprocess.run(restore, input=dump.stdout, check=True, capture_output=True, timeout=60)
        return self.url(name)

    def remove(self) -> None:
        with suppress(subprocess.CalledProcessError):  # not running
            self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
