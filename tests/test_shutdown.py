"""A server sent SIGTERM answers what waits in it at once and exits: a restart takes about a
second, not the longest long poll."""

import contextlib
import signal
import threading
import time

import httpx
import pytest
from asgiref.sync import async_to_sync
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from accounts.services import api_key_create, user_get_or_create
from aitbc_site.routing import websocket_urlpatterns
from core import shutdown
from core.sockets import CLOSE_RESTARTING
from tests.processes import Server, server_env

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

POLL_SECONDS = 30
# Enough for gunicorn (its workers keep a kept-alive connection 2 s, then the master reaps them)
# and the interpreter's teardown on a loaded machine; far below the poll's wait.
EXIT_SECONDS = 10


@pytest.fixture
def miner_key():
    return api_key_create(user=user_get_or_create(username="restart-owner"), scope="miner").raw_key


def register(server: Server, key: str, miner_id: str) -> httpx.Client:
    miner = httpx.Client(
        base_url=server.url, headers={"X-Api-Key": key, "X-Miner-ID": miner_id}, timeout=POLL_SECONDS + 10
    )
    registered = miner.post("/v1/miners/register", json={"capabilities": {"models": ["restart-model"]}})
    assert registered.status_code == 200, registered.text
    return miner


def start_long_poll(miner: httpx.Client) -> list:
    """A poll waiting POLL_SECONDS for work that never comes; the list gets its answer and when."""
    answer = []

    def poll():
        response = miner.post("/v1/miners/poll", json={"max_wait_seconds": POLL_SECONDS})
        answer.append((response.status_code, time.monotonic()))

    threading.Thread(target=poll, daemon=True).start()
    time.sleep(1.5)  # the poll is parked on its wake-up by now
    assert answer == [], "the poll did not wait"
    return answer


@pytest.mark.parametrize("kind", ["daphne", "gunicorn"])
def test_sigterm_answers_a_waiting_long_poll_with_204_and_the_server_exits_at_once(kind, miner_key, tmp_path):
    server = Server(kind, env=server_env(tmp_path), log_path=tmp_path / f"{kind}.log")
    try:
        answer = start_long_poll(register(server, miner_key, "polling-rig"))
        signalled = time.monotonic()
        exited_after = server.terminate(timeout=EXIT_SECONDS)
    finally:
        server.kill()
    assert exited_after < EXIT_SECONDS, server.log()
    assert len(answer) == 1, server.log()
    status, answered_at = answer[0]
    assert status == 204
    assert answered_at - signalled < 2


def test_sigterm_closes_miner_and_dashboard_sockets_asking_them_to_reconnect(miner_key, tmp_path):
    client_key = api_key_create(user=user_get_or_create(username="restart-client"), scope="client").raw_key
    server = Server("daphne", env=server_env(tmp_path), log_path=tmp_path / "daphne.log")
    try:
        register(server, miner_key, "socket-rig")
        miner_headers = {"X-Api-Key": miner_key, "X-Miner-ID": "socket-rig"}
        with (
            connect(f"{server.ws_url}/ws/miners/", additional_headers=miner_headers) as miner_socket,
            connect(f"{server.ws_url}/ws/dashboard/", additional_headers={"X-Api-Key": client_key}) as dashboard,
        ):
            dashboard.recv(timeout=10)  # the stats snapshot: the socket is open
            server.terminate(timeout=EXIT_SECONDS)
            for socket in (miner_socket, dashboard):
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        socket.recv(timeout=1)
                assert closed.value.rcvd is not None, server.log()
                assert closed.value.rcvd.code == CLOSE_RESTARTING == 4503
    finally:
        server.kill()


def test_sigterm_cancels_what_outlasts_the_drain_and_answers_requests_meanwhile_with_503(miner_key, tmp_path):
    """A chat completion waits for a job no miner takes, past daphne's drain: daphne cancels it
    and exits all the same. A request arriving during the drain is answered 503 at once, but a
    miner's report, which finishes work in flight, is served."""
    client_key = api_key_create(user=user_get_or_create(username="drain-client"), scope="client").raw_key
    server = Server("daphne", env=server_env(tmp_path), log_path=tmp_path / "daphne.log")
    try:
        miner = register(server, miner_key, "drain-rig")  # online: its model is one a miner serves
        answer = []

        def chat():
            body = {"model": "restart-model", "messages": [{"role": "user", "content": "hi"}]}
            with contextlib.suppress(httpx.HTTPError):  # cut when daphne exits
                answer.append(
                    httpx.post(
                        f"{server.url}/v1/chat/completions", json=body, headers={"X-Api-Key": client_key}, timeout=90
                    )
                )

        threading.Thread(target=chat, daemon=True).start()
        time.sleep(1.5)
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(1)
        meanwhile = httpx.get(f"{server.url}/health/live", timeout=5)
        report = miner.post("/v1/miners/tokens", json={"tokens": []})
        server.proc.wait(timeout=EXIT_SECONDS + 5)
        exited_after = time.monotonic() - signalled
    finally:
        server.kill()
    assert (meanwhile.status_code, meanwhile.headers.get("retry-after")) == (503, "1"), server.log()
    assert meanwhile.json()["error_code"] == "SERVICE_UNAVAILABLE"
    assert report.status_code < 500, report.text
    assert exited_after < EXIT_SECONDS, server.log()


@pytest.fixture
def stopping():
    shutdown.stop_waiting()
    yield
    shutdown._stopping.clear()


def test_a_socket_connecting_while_the_server_stops_is_told_to_connect_again(stopping):
    async def connect_while_stopping():
        socket = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/dashboard/")
        connected, _ = await socket.connect()
        assert connected
        return await socket.receive_output()

    assert async_to_sync(connect_while_stopping)() == {"type": "websocket.close", "code": CLOSE_RESTARTING}


def test_a_poll_arriving_while_the_server_stops_answers_at_once(stopping, miner_api, register_miner):
    register_miner(miner_api)
    started = time.monotonic()
    assert miner_api.post("/v1/miners/poll", {"max_wait_seconds": 30}, format="json").status_code == 204
    assert time.monotonic() - started < 2


@contextlib.contextmanager
def ctrl_c_not_ignored():
    """A test run started in the background (a shell's job, a CI runner's) ignores SIGINT, and a
    server it starts would inherit that; a handler of its own is reset to the default in the server."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_or_ctrl_c_hands_the_embedded_workers_running_jobs_back_to_the_queue(
    signum, serve, tiny_model, client_api
):
    """As ``bin/start`` runs it: the server's own in-cluster miner gives its running jobs back as it
    stops (not held against it), rather than holding them until their leases lapse."""
    from inference.testing import TINY
    from jobs.models import FailedAttempt, Job, JobStatus

    with ctrl_c_not_ignored():
        server = serve(TINY)
    submitted = httpx.post(
        f"{server.url}/v1/jobs",
        headers={"X-Api-Key": client_api.raw_key},
        json={"prompt": "The coordinator", "model": TINY, "params": {"max_tokens": 2000, "temperature": 0}},
    )
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["job_id"]
    deadline = time.monotonic() + 30
    while Job.objects.get(pk=job_id).status == JobStatus.QUEUED and time.monotonic() < deadline:
        time.sleep(0.05)

    assert Job.objects.get(pk=job_id).status == JobStatus.RUNNING, server.log()
    signalled = time.monotonic()
    server.proc.send_signal(signum)
    server.proc.wait(timeout=EXIT_SECONDS)
    exited_after = time.monotonic() - signalled
    job = Job.objects.get(pk=job_id)
    assert exited_after < EXIT_SECONDS, server.log()
    assert job.status == JobStatus.QUEUED, server.log()
    assert job.error_code == "MINER_SHUTDOWN"
    assert not FailedAttempt.objects.exists()
