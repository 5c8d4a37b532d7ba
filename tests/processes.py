"""Real processes for tests about what a deployment meets: daphne and gunicorn serving the app on
the test's database, a redis-server and a PostgreSQL cluster of the test's own (which the test may
stop and start without touching the shared servers). ``aitbc_site.testing.processes`` runs them;
here they are started the way these tests need, and skip where the machine lacks a server.
"""

import os
import shutil
import time
from pathlib import Path

import pytest
from django.db import connection

from aitbc_site.testing import processes
from aitbc_site.testing.processes import HttpServer, daphne_command, free_port, gunicorn_command, postgres_bin_dir


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


class Server(HttpServer):
    """daphne, or gunicorn with two gthread workers, serving ``aitbc_site`` on a port of its own;
    started (and answering) once made."""

    def __init__(self, kind: str, *, env: dict, log_path: Path):
        port = free_port()
        commands = {"daphne": daphne_command, "gunicorn": lambda port: gunicorn_command(port, workers=2, threads=4)}
        super().__init__(commands[kind](port), port=port, env=env, log_path=log_path, name=kind)
        self.start()


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


class RedisServer(processes.RedisServer):
    def __init__(self):
        if shutil.which("redis-server") is None:
            pytest.skip("needs redis-server on PATH (CI has it)")
        super().__init__()


class PostgresCluster(processes.PostgresCluster):
    def __init__(self):
        if postgres_bin_dir() is None:
            pytest.skip("needs PostgreSQL's server binaries under /usr/lib/postgresql (CI has them)")
        super().__init__()
