"""Live sockets on a real daphne with the Redis channel layer stay open while nothing happens.

A socket's channel is read with a blocking pop that channels-redis repeats every few seconds;
a Redis read timeout no longer than that pop closed every socket idle that long with 1011.
"""

import json
import time

import httpx
import pytest
from django.conf import settings
from websockets.sync.client import connect

from accounts.services import api_key_create, user_get_or_create
from tests.processes import Server, server_env

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not settings.REDIS_URL, reason="needs Redis (set REDIS_URL); CI always sets it"),
]

IDLE_SECONDS = 30


def next_message(socket, matches, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        message = json.loads(socket.recv(timeout=max(0.1, deadline - time.monotonic())))
        if matches(message):
            return message


def test_dashboard_job_and_miner_sockets_idle_for_30_seconds_stay_open_and_deliver(tmp_path):
    client_key = api_key_create(user=user_get_or_create(username="idle-client"), scope="client").raw_key
    miner_key = api_key_create(user=user_get_or_create(username="idle-miner-owner"), scope="miner").raw_key
    server = Server("daphne", env=server_env(tmp_path, REDIS_URL=settings.REDIS_URL), log_path=tmp_path / "daphne.log")
    try:
        client = httpx.Client(base_url=server.url, headers={"X-Api-Key": client_key}, timeout=10)
        miner = httpx.Client(
            base_url=server.url, headers={"X-Api-Key": miner_key, "X-Miner-ID": "idle-rig"}, timeout=10
        )
        registered = miner.post("/v1/miners/register", json={"capabilities": {"models": ["idle-push"]}})
        assert registered.status_code == 200, registered.text
        watched = client.post(
            "/v1/jobs", json={"payload": {"type": "inference", "prompt": "wait", "model": "idle-watch"}}
        )
        assert watched.status_code == 201, watched.text
        job_id = watched.json()["job_id"]

        key_header = {"X-Api-Key": client_key}
        with (
            connect(f"{server.ws_url}/ws/dashboard/", additional_headers=key_header) as dashboard,
            connect(f"{server.ws_url}/ws/jobs/{job_id}/", additional_headers=key_header) as job_socket,
            connect(
                f"{server.ws_url}/ws/miners/", additional_headers={"X-Api-Key": miner_key, "X-Miner-ID": "idle-rig"}
            ) as miner_socket,
        ):
            assert json.loads(job_socket.recv(timeout=10))["status"] == "queued"
            time.sleep(IDLE_SECONDS)

            # Each socket still answers, and still receives what is published through Redis.
            pushed = client.post(
                "/v1/jobs", json={"payload": {"type": "inference", "prompt": "go", "model": "idle-push"}}
            )
            assert pushed.status_code == 201, pushed.text
            assigned = next_message(miner_socket, lambda message: message["type"] == "job.assigned")
            assert assigned["job"]["job_id"] == pushed.json()["job_id"]
            assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
            cancelled = next_message(job_socket, lambda message: message["type"] == "job.status")
            assert cancelled["status"] == "cancelled"
            # The submission's own update may still be on its way when the socket opened: the
            # cancellation is the one looked for (recv times out if it never comes).
            next_message(
                dashboard,
                lambda message: (
                    message.get("kind") == "job.updated"
                    and message["data"]["job_id"] == job_id
                    and message["data"]["status"] == "cancelled"
                ),
            )
    finally:
        server.terminate()
    assert "Timeout reading" not in server.log()
