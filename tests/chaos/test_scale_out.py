"""Scaled out: two gunicorn, two daphne and two Dramatiq worker processes, the scheduler and
external HTTP miners against one PostgreSQL and one Redis. What happens through one process
reaches the sockets of another, and jobs sent to any server complete exactly once. Then the nginx
example of ``deploy/`` in front of them: sockets through ``/ws/``, long polls and the rest through
to gunicorn.
"""

import asyncio
import json
import shutil
import subprocess
import time

import httpx
import pytest
from websockets.sync.client import connect

from aitbc_site.testing.chaos import CLIENT_KEYS, MINER_KEY, ChaosRun, Deployment, Layout
from aitbc_site.testing.processes import ROOT, free_port

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

CLIENT = {"X-Api-Key": CLIENT_KEYS[0]}
PUSH_MODEL = "scale-out-model"


@pytest.fixture(scope="module")
def scaled(backing, tmp_path_factory):
    layout = Layout(
        gunicorns=2, gunicorn_workers=1, daphnes=2, housekeeping_workers=2, miner_fleets=1, miners_per_fleet=2
    )
    deployment = Deployment(backing, name="scale_out", layout=layout, log_dir=tmp_path_factory.mktemp("scale-out"))
    with deployment:
        yield deployment
    for process in deployment.processes:
        print(f"--- {process.name} ---\n{process.log()}")


def next_message(socket, matches, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        message = json.loads(socket.recv(timeout=max(0.1, deadline - time.monotonic())))
        if matches(message):
            return message


def feed_event(kind: str, job_id: str | None = None):
    return lambda m: m.get("kind") == kind and (job_id is None or m["data"].get("job_id") == job_id)


def test_sockets_on_one_daphne_receive_what_happens_through_the_other_servers(scaled):
    gunicorn_a, gunicorn_b = scaled.gunicorns
    daphne_a, daphne_b = scaled.daphnes
    push_rig = {"X-Api-Key": MINER_KEY, "X-Miner-ID": "push-rig"}
    registered = httpx.post(
        f"{gunicorn_a.url}/v1/miners/register", headers=push_rig, json={"capabilities": {"models": [PUSH_MODEL]}}
    )
    assert registered.status_code == 200, registered.text

    with (
        connect(f"{daphne_a.ws_url}/ws/dashboard/", additional_headers=CLIENT) as dashboard_a,
        connect(f"{daphne_b.ws_url}/ws/dashboard/", additional_headers=CLIENT) as dashboard_b,
        connect(f"{daphne_b.ws_url}/ws/miners/", additional_headers=push_rig) as miner_socket,
    ):
        body = {"payload": {"type": "inference", "prompt": "scale out", "model": PUSH_MODEL}}
        submitted = httpx.post(f"{gunicorn_a.url}/v1/jobs", headers=CLIENT, json=body)
        assert submitted.status_code == 201, submitted.text
        job_id = submitted.json()["job_id"]

        # Committed through gunicorn A; announced by PostgreSQL; claimed and pushed by daphne B.
        assigned = next_message(miner_socket, lambda m: m["type"] == "job.assigned")
        assert assigned["job"]["job_id"] == job_id
        # Published by gunicorn A, through Redis, to the feed sockets of both daphnes.
        next_message(dashboard_a, feed_event("job.submitted", job_id))
        next_message(dashboard_b, feed_event("job.submitted", job_id))

        with connect(f"{daphne_a.ws_url}/ws/jobs/{job_id}/", additional_headers=CLIENT) as job_socket:
            assert json.loads(job_socket.recv(timeout=20))["status"] == "running"
            result = {"result": {"output": "far away"}, "lease_token": assigned["job"]["lease_token"]}
            answered = httpx.post(f"{gunicorn_b.url}/v1/miners/{job_id}/result", headers=push_rig, json=result)
            assert answered.status_code == 200, answered.text
            # Completed through gunicorn B; the client's socket on daphne A hears it.
            done = next_message(job_socket, lambda m: m.get("type") == "job.status" and m["status"] == "completed")
            assert done["result"] == {"output": "far away"}
        next_message(dashboard_a, feed_event("job.finished", job_id))
        # Sealed by one of the Dramatiq workers.
        next_message(dashboard_a, feed_event("block.sealed"), timeout=30)


def test_jobs_sent_to_any_server_complete_exactly_once(scaled):
    chaos = ChaosRun(scaled, ports=[server.port for server in (*scaled.gunicorns, *scaled.daphnes)])

    async def load():
        await chaos.submit(100)
        await chaos.drain()

    asyncio.run(load())
    report = chaos.report()
    print(json.dumps(report, indent=2))
    assert report["violations"] == {}
    assert report["chain_verifies"], report["chain_output"]
    assert report["invariants"]["jobs_accepted"] == 100
    assert report["client_traffic"]["non_429_success_rate"] == 1.0
    assert report["miner_request_failures"] == 0


@pytest.fixture(scope="module")
def nginx(scaled, tmp_path_factory):
    """The example site of ``deploy/nginx`` with this deployment's ports in place of the example's."""
    if shutil.which("nginx") is None:
        pytest.skip("needs nginx (apt-get install nginx; .ci/run does)")
    directory = tmp_path_factory.mktemp("nginx")
    port = free_port()
    site = (ROOT / "deploy" / "nginx" / "aitbc.conf").read_text()
    ports = {"80": port, "8000": scaled.gunicorns[0].port, "8001": scaled.gunicorns[1].port}
    ports |= {"8100": scaled.daphnes[0].port, "8101": scaled.daphnes[1].port}
    site = site.replace("listen 80;", "listen 127.0.0.1:80;")
    for example, actual in ports.items():
        site = site.replace(f"127.0.0.1:{example};", f"127.0.0.1:{actual};")
    (directory / "aitbc.conf").write_text(site)
    (directory / "nginx.conf").write_text(
        f"daemon off;\npid {directory}/nginx.pid;\nerror_log {directory}/error.log;\nevents {{}}\n"
        f"http {{\n    access_log off;\n    client_body_temp_path {directory}/body;\n"
        f"    proxy_temp_path {directory}/proxy;\n    include {directory}/aitbc.conf;\n}}\n"
    )
    server = subprocess.Popen(["nginx", "-p", str(directory), "-c", str(directory / "nginx.conf")])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            assert server.poll() is None, (directory / "error.log").read_text()
            try:
                httpx.get(f"{url}/health/live", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "nginx did not answer"
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_nginx_example_carries_sockets_long_polls_and_the_api(scaled, nginx):
    ws_url = nginx.replace("http://", "ws://")
    polling_rig = {"X-Api-Key": MINER_KEY, "X-Miner-ID": "nginx-rig"}
    api = httpx.Client(base_url=nginx, timeout=30)
    assert api.post(
        "/v1/miners/register", headers=polling_rig, json={"capabilities": {"models": ["nginx-model"]}}
    ).is_success

    with connect(f"{ws_url}/ws/dashboard/", additional_headers=CLIENT) as dashboard:
        # A long poll waits in gunicorn behind nginx and is answered the moment a job arrives.
        with httpx.Client(base_url=nginx, timeout=30) as poller:
            started = time.monotonic()
            body = {"payload": {"type": "inference", "prompt": "via nginx", "model": "nginx-model"}}
            poll = asyncio.run(_poll_then_submit(poller, api, polling_rig, body))
        assert poll.status_code == 200, poll.text
        assert time.monotonic() - started < 10
        job_id = poll.json()["job_id"]
        next_message(dashboard, feed_event("job.submitted", job_id))


async def _poll_then_submit(poller: httpx.Client, api: httpx.Client, headers: dict, body: dict) -> httpx.Response:
    poll = asyncio.create_task(
        asyncio.to_thread(poller.post, "/v1/miners/poll", headers=headers, json={"max_wait_seconds": 20})
    )
    await asyncio.sleep(1)
    submitted = await asyncio.to_thread(api.post, "/v1/jobs", headers=CLIENT, json=body)
    assert submitted.status_code == 201, submitted.text
    return await poll
