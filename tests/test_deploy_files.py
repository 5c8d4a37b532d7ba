"""The deployment files of ``deploy/`` are what systemd and nginx accept, and run this checkout's
programs. (``tests/chaos/test_scale_out.py`` runs the nginx site in front of real servers.)"""

import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from django.core.management import get_commands

from aitbc_site.testing.pages import PASSWORD, make_user
from aitbc_site.testing.processes import free_port, gunicorn_command

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
# The instances docs/operations.md enables: two of each server, two housekeeping workers, one GPU worker.
INSTANCES = [
    "aitbc.target",
    "aitbc-migrate.service",
    "aitbc-scheduler.service",
    "aitbc-web@8000.service",
    "aitbc-web@8001.service",
    "aitbc-ws@8100.service",
    "aitbc-ws@8101.service",
    "aitbc-worker@1.service",
    "aitbc-worker@2.service",
    "aitbc-inference@0.service",
]


def test_the_verified_instances_cover_every_unit_file():
    templates = {re.sub(r"@[^.]*\.", "@.", name) for name in INSTANCES}
    assert templates == {path.name for path in (DEPLOY / "systemd").iterdir()}


def test_systemd_units_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze (Debian's systemd package)")
    env_file = tmp_path / "aitbc.env"
    env_file.write_text((DEPLOY / "aitbc.env.example").read_text())
    for unit in (DEPLOY / "systemd").iterdir():
        # As installed in this checkout: systemd checks that every program it would run exists.
        text = unit.read_text().replace("/srv/aitbc", str(ROOT)).replace("/etc/aitbc/aitbc.env", str(env_file))
        (tmp_path / unit.name).write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / name) for name in INSTANCES)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Warnings (an unknown key, a bad value ignored) do not fail the command: none may concern our units.
    assert "aitbc" not in done.stdout + done.stderr


def test_unit_commands_name_programs_and_commands_of_this_project():
    manage_commands = get_commands()
    for unit in (DEPLOY / "systemd").glob("*.service"):
        for line in unit.read_text().splitlines():
            if not line.startswith("ExecStart="):
                continue
            program, *args = line.removeprefix("ExecStart=").split()
            assert program.startswith("/srv/aitbc/.venv/bin/"), line
            assert (ROOT / ".venv" / "bin" / Path(program).name).exists(), line
            if args[:1] == ["manage.py"]:
                assert args[1] in manage_commands, line


def _gunicorn_settings(command: list[str]) -> dict[str, str]:
    """The settings gunicorn would run ``command`` (a gunicorn command line) with, read from this
    checkout as it starts them (``--print-config``)."""
    done = subprocess.run(
        [*command, "--print-config"], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True
    )
    pairs = (line.partition(" = ") for line in done.stdout.splitlines() if " = " in line)
    return {name.strip(): value.strip() for name, _, value in pairs}


def _unit_gunicorn_commands() -> list[list[str]]:
    commands = []
    for unit in (DEPLOY / "systemd").glob("*.service"):
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart=") and "/gunicorn " in line:
                args = line.removeprefix("ExecStart=").replace("/srv/aitbc", str(ROOT)).replace("%i", "8000")
                commands.append(args.split())
    return commands


def test_no_gunicorn_opens_the_control_socket_its_neighbours_share():
    # Every instance on a host would take the same default path from the one before.
    commands = _unit_gunicorn_commands()
    assert commands, "no gunicorn unit found"
    for command in [*commands, gunicorn_command(free_port(), workers=1, threads=1)]:
        assert _gunicorn_settings(command)["control_socket_disable"] == "True", command


def test_nginx_site_passes_nginx_t(tmp_path):
    if shutil.which("nginx") is None:
        pytest.skip("needs nginx (apt-get install nginx; .ci/run does)")
    config = tmp_path / "nginx.conf"
    config.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n    include {DEPLOY}/nginx/aitbc.conf;\n}}\n"
    )
    done = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-c", str(config)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


@pytest.mark.django_db(transaction=True)
def test_a_browser_signs_in_through_the_nginx_site_on_a_port_of_its_own(live_server, tmp_path):
    if shutil.which("nginx") is None:
        pytest.skip("needs nginx (apt-get install nginx; .ci/run does)")
    make_user("behind-nginx")
    upstream = live_server.url.removeprefix("http://")
    port = free_port()
    site = (DEPLOY / "nginx" / "aitbc.conf").read_text().replace("listen 80;", f"listen 127.0.0.1:{port};")
    site = re.sub(r"server 127\.0\.0\.1:\d+;", f"server {upstream};", site)
    (tmp_path / "aitbc.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"daemon off;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n    access_log off;\n    client_body_temp_path {tmp_path}/body;\n"
        f"    proxy_temp_path {tmp_path}/proxy;\n    include {tmp_path}/aitbc.conf;\n}}\n"
    )
    server = subprocess.Popen(["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")])
    origin = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=origin, timeout=10) as browser:
            deadline = time.monotonic() + 10
            while True:
                assert server.poll() is None, (tmp_path / "error.log").read_text()
                try:
                    form = browser.get("/login/")
                    break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline, "nginx did not answer"
                    time.sleep(0.1)
            token = browser.cookies["csrftoken"]
            signed_in = browser.post(
                "/login/",
                data={"csrfmiddlewaretoken": token, "username": "behind-nginx", "password": PASSWORD},
                headers={"Origin": origin, "Referer": f"{origin}/login/"},
            )
    finally:
        server.terminate()
        server.wait(timeout=10)

    assert form.status_code == 200
    assert signed_in.status_code == 302, signed_in.text[:300]
