"""daphne listens with room for a burst of new connections: Twisted's default backlog is 50, and
past it a new connection waits for its client to try again a second later (or is reset), which
200 streams opened at once, or a fleet of miners reconnecting after a restart, meet."""

import re
import subprocess
from pathlib import Path

import pytest

from tests.processes import Server, server_env

ROOT = Path(__file__).resolve().parent.parent
BACKLOG = 2048


def listen_backlog(port: int) -> int:
    """The backlog of the socket listening on ``port`` (``ss`` shows it as a listener's Send-Q)."""
    listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True)
    [line] = listening.stdout.splitlines()
    return int(line.split()[2])


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_daphne_as_the_tests_start_it_listens_with_the_deployed_backlog(tmp_path):
    server = Server("daphne", env=server_env(tmp_path), log_path=tmp_path / "daphne.log")
    try:
        assert listen_backlog(server.port) == BACKLOG
    finally:
        server.kill()


@pytest.mark.parametrize("path", ["deploy/systemd/aitbc-ws@.service", "bin/start"])
def test_every_daphne_command_line_sets_the_backlog(path):
    [command] = [line for line in (ROOT / path).read_text().splitlines() if "bin/daphne " in line]
    assert re.search(rf"\btcp:port=[^ ]*:backlog={BACKLOG}\b", command), command


@pytest.mark.parametrize(
    ("host", "interface"), [("127.0.0.1", "127.0.0.1"), ("::", r"\:\:"), ("::1", r"\:\:1"), ("[::1]", r"\:\:1")]
)
def test_bin_start_gives_daphne_its_host_as_twisted_reads_an_interface(host, interface):
    """bin/start's HOST is an address, an IPv6 one bare or bracketed as in its demo URL; Twisted's
    endpoint takes it bare with each colon escaped."""
    listen = [
        line.replace("exec .venv/bin/daphne", "printf '%s\\n'")
        for line in (ROOT / "bin/start").read_text().splitlines()
        if line.startswith(("INTERFACE=", "exec .venv/bin/daphne "))
    ]
    printed = subprocess.run(
        ["bash", "-euc", "\n".join(listen)],
        env={"HOST": host, "PORT": "8000"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert printed.stdout.splitlines()[1] == f"tcp:port=8000:interface={interface}:backlog={BACKLOG}"
