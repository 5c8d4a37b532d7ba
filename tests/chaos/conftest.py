"""Fault tests against real processes on loopback.

One PostgreSQL cluster and one redis-server of the session's own (never the shared servers: these
tests restart and stop them), the schema migrated once into a template; every test deploys on a
fresh copy of it. The processes' logs are printed after each test (pytest shows them when it fails).
"""

import shutil

import pytest

from aitbc_site.testing.chaos import Backing, Deployment
from aitbc_site.testing.processes import postgres_bin_dir


def _missing() -> list[str]:
    missing = []
    if postgres_bin_dir() is None:
        missing.append("PostgreSQL's server binaries (initdb, pg_ctl)")
    if shutil.which("redis-server") is None:
        missing.append("redis-server")
    return missing


def pytest_collection_modifyitems(config, items):
    missing = _missing()
    if not missing:
        return
    skip = pytest.mark.skip(reason=f"needs {' and '.join(missing)} (CI has them)")
    for item in items:
        if "tests/chaos" in str(item.path):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def backing(tmp_path_factory):
    with Backing(tmp_path_factory.mktemp("chaos-backing")) as backing:
        yield backing


@pytest.fixture
def deploy(backing, tmp_path):
    """``deploy(layout, catalog=(), **settings)``: a started deployment on a fresh database,
    stopped after the test."""
    deployments = []

    def deploy(layout, *, catalog=(), **settings):
        deployment = Deployment(
            backing, name=f"chaos_{len(deployments)}", layout=layout, log_dir=tmp_path, settings=settings,
            catalog=catalog,
        )  # fmt: skip
        deployments.append(deployment)
        return deployment.start()

    yield deploy
    for deployment in deployments:
        deployment.stop()
        for process in deployment.processes:
            print(f"--- {process.name} ---\n{process.log()}")
