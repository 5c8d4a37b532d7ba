"""The external miner agent (``runminer``) against a live coordinator."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from inference import engine
from inference.agent import AgentError, MinerAgent, TokenStream
from inference.management.commands.runminer import Command as RunMiner
from inference.tests.conftest import TINY
from jobs.models import Job, JobStatus
from miners.models import Miner

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]


def submit(api, prompt="The coordinator", max_tokens=8):
    body = {"prompt": prompt, "model": TINY, "params": {"max_tokens": max_tokens, "temperature": 0}}
    response = api.post("/v1/jobs", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()["job_id"]


def wait_for(condition, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def miner_key(make_api):
    return make_api("miner", "gpu-owner").raw_key


def test_agent_completes_a_job_against_a_live_server(live_server, tiny_model, client_api, miner_key, tmp_path):
    job_id = submit(client_api)
    agent = MinerAgent(
        url=live_server.url, api_key=miner_key, models=[TINY], miner_id="agent-1",
        poll_wait=1, heartbeat_seconds=1, cache_dir=tmp_path, max_jobs=1,
    )  # fmt: skip
    watchdog = threading.Timer(60, agent.abort)
    watchdog.start()
    try:
        assert agent.run() == 1
    finally:
        watchdog.cancel()
    job = Job.objects.get(pk=job_id)
    assert job.status == JobStatus.COMPLETED
    assert job.miner.miner_id == "agent-1"
    assert isinstance(job.result["text"], str)
    assert job.usage["completion_tokens"] > 0
    assert client_api.get(f"/v1/jobs/{job_id}/receipt").status_code == 200


def test_a_job_polled_while_another_runs_joins_its_batch_and_is_answered_first(
    live_server, tiny_model, client_api, miner_key, tmp_path, monkeypatch
):
    step = engine.Generation.step

    def slow_step(batch):  # 20 ms a step: the long job takes 20 s
        time.sleep(0.02)
        return step(batch)

    monkeypatch.setattr(engine.Generation, "step", slow_step)
    agent = MinerAgent(
        url=live_server.url, api_key=miner_key, models=[TINY], miner_id="agent-5",
        poll_wait=1, heartbeat_seconds=1, cache_dir=tmp_path, batch_size=4,
    )  # fmt: skip
    runner = threading.Thread(target=agent.run)
    runner.start()
    try:
        long_id = submit(client_api, max_tokens=1000)
        assert wait_for(lambda: Job.objects.get(pk=long_id).status == JobStatus.RUNNING)
        short_id = submit(client_api, "A miner claims", max_tokens=4)
        assert wait_for(lambda: Job.objects.get(pk=short_id).status == JobStatus.COMPLETED, timeout=15)
        assert Job.objects.get(pk=long_id).status == JobStatus.RUNNING
    finally:
        agent.abort()
        runner.join(timeout=60)
    assert Job.objects.get(pk=long_id).error_code == "MINER_SHUTDOWN"


def test_agent_registers_what_it_serves(live_server, tiny_model, miner_key, tmp_path):
    agent = MinerAgent(url=live_server.url, api_key=miner_key, models=[TINY], miner_id="agent-2", cache_dir=tmp_path)
    agent.load_models()
    agent.register()
    miner = Miner.objects.get(miner_id="agent-2")
    assert list(miner.served_models.values_list("name", flat=True)) == [TINY]
    assert miner.gpu_name
    assert not miner.in_cluster


def test_agent_refuses_models_the_catalog_does_not_list(live_server, tiny_model, miner_key):
    agent = MinerAgent(url=live_server.url, api_key=miner_key, models=["gpt-17"], miner_id="agent-3")
    with pytest.raises(AgentError, match="gpt-17"):
        agent.load_models()


def test_agent_with_a_refused_key_stops_with_a_readable_error(live_server, tiny_model):
    agent = MinerAgent(url=live_server.url, api_key="wrong", models=[TINY], miner_id="agent-4")
    with pytest.raises(AgentError, match="401"):
        agent.run()


def start_runminer(live_server, key, tmp_path, *extra):
    command = [
        sys.executable, "manage.py", "runminer", "--url", live_server.url, "--api-key", key, "--models", TINY,
        "--miner-id", "sigterm-miner", "--poll-wait", "1", "--heartbeat", "1", "--cache-dir", str(tmp_path), *extra,
    ]  # fmt: skip
    # As a miner host runs it: no SECRET_KEY, debug off.
    env = {name: value for name, value in os.environ.items() if name != "SECRET_KEY"}
    env.update(DEBUG="false", AITBC_DATA_DIR=str(tmp_path))
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_until_job_is_running(live_server, client_api, key, tmp_path, *extra):
    process = start_runminer(live_server, key, tmp_path, *extra)
    try:
        assert wait_for(lambda: Miner.objects.filter(miner_id="sigterm-miner").exists()), process.stdout.read()
        job_id = submit(client_api, max_tokens=1900)
        assert wait_for(lambda: Job.objects.get(pk=job_id).status == JobStatus.RUNNING)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=180)
    finally:
        process.kill()
    return process.returncode, output, Job.objects.get(pk=job_id)


def test_sigterm_finishes_the_running_jobs_then_exits(live_server, tiny_model, client_api, miner_key, tmp_path):
    # A grace period a loaded host can't outrun: the job must finish within it, not race it.
    returncode, output, job = run_until_job_is_running(live_server, client_api, miner_key, tmp_path, "--grace", "150")
    assert returncode == 0, output
    assert job.status == JobStatus.COMPLETED, output
    assert f"job {job.pk} ({job.model}) completed" in output, "one line per job"
    assert "HTTP Request:" not in output, "not one per request"
    assert "stopped after answering 1 job\n" in output


def test_sigterm_past_the_grace_period_hands_the_job_back(live_server, tiny_model, client_api, miner_key, tmp_path):
    returncode, output, job = run_until_job_is_running(live_server, client_api, miner_key, tmp_path, "--grace", "0")
    assert returncode == 0, output
    assert job.status == JobStatus.QUEUED
    assert job.error_code == "MINER_SHUTDOWN"


def test_an_idle_agent_stops_within_a_second_and_its_waiting_poll_takes_no_job(
    live_server, tiny_model, client_api, miner_key, tmp_path
):
    agent = MinerAgent(
        url=live_server.url, api_key=miner_key, models=[TINY], miner_id="idle-miner",
        poll_wait=15, heartbeat_seconds=1, cache_dir=tmp_path,
    )  # fmt: skip
    answered = []
    runner = threading.Thread(target=lambda: answered.append(agent.run()))
    runner.start()
    try:
        assert wait_for(lambda: Miner.objects.filter(miner_id="idle-miner").exists())
        time.sleep(1)  # its long poll is waiting on the coordinator
        stopped_at = time.monotonic()
        agent.stop()
        runner.join(timeout=20)
        took = time.monotonic() - stopped_at
    finally:
        agent.abort()
        runner.join()

    assert answered == [0]
    assert took < 3, f"stopped after {took:.1f} s"
    # The poll it left waits on until its deadline, but may take nothing for a miner gone.
    job_id = submit(client_api)
    time.sleep(1)
    assert Job.objects.get(pk=job_id).status == JobStatus.QUEUED
    assert Miner.objects.get(miner_id="idle-miner").status == "deregistered"


def test_runminer_batches_as_many_jobs_as_an_in_cluster_worker_by_default(settings):
    settings.INFERENCE_BATCH_SIZE = 24
    parser = RunMiner().create_parser("manage.py", "runminer")
    assert parser.parse_args(["--models", TINY]).batch_size == 24


def test_a_coordinator_down_behind_a_proxy_is_retried_and_logged_on_one_line(monkeypatch, caplog):
    page = "<html>\n<head><title>502 Bad Gateway</title></head>\n<body>nginx</body>\n</html>\n"
    answers = iter([httpx.Response(502, text=page), httpx.Response(200, json={"status": "ok"})])
    agent = MinerAgent(
        url="http://coordinator", api_key="k", models=[TINY], miner_id="steady",
        transport=httpx.MockTransport(lambda request: next(answers)),
    )  # fmt: skip
    monkeypatch.setattr(MinerAgent, "RETRY_DELAYS", (0.01,))

    assert agent._request("POST", "/v1/miners/heartbeat").status_code == 200

    [warning] = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert "\n" not in warning
    assert "502 <html> <head><title>502 Bad Gateway</title>" in warning


def test_a_result_is_retried_through_a_coordinator_outage_longer_than_the_retry_delays(monkeypatch):
    refused = httpx.ConnectError("Connection refused")
    outage = [refused] * 8  # past the delays: a poll would go on, a result must too
    posted = []

    def answer(request):
        if outage:
            raise outage.pop()
        posted.append(json.loads(request.content))
        return httpx.Response(200, json={"status": "completed"})

    agent = MinerAgent(
        url="http://coordinator", api_key="k", models=[TINY], miner_id="steady",
        transport=httpx.MockTransport(answer),
    )  # fmt: skip
    monkeypatch.setattr(MinerAgent, "RETRY_DELAYS", (0.01, 0.02))
    agent.stop()  # stopping, not aborting: the result still goes out
    answered = engine.Answer(key="job-1", result={"text": "hi"}, metrics={}, error=None)

    agent.report({"job_id": "job-1", "lease_token": "t"}, answered)

    assert posted == [{"result": {"text": "hi"}, "metrics": {}, "lease_token": "t"}]
    assert agent.jobs_done == 1


def test_pieces_not_sent_through_an_outage_are_logged_once_and_counted_when_it_ends(caplog):
    caplog.set_level("INFO", logger="inference.agent")
    # A server stopping answers 503, then refuses connections until it is back.
    outage = [httpx.ConnectError("Connection refused")] * 3 + [httpx.Response(503), httpx.Response(503)]

    def answer(request):
        if outage:
            failure = outage.pop()
            if isinstance(failure, httpx.Response):
                return failure
            raise failure
        return httpx.Response(200, json={"refused_jobs": []})

    stream = TokenStream(
        httpx.Client(base_url="http://coordinator", transport=httpx.MockTransport(answer)), over="http"
    )
    stream.start()
    for index in range(6):
        stream.put([{"job_id": "job-1", "index": index, "text": "w", "lease_token": "t"}])
        assert stream.flush(timeout=5)
    stream.close()

    said = [message for message in caplog.messages if "streamed piece" in message]
    assert said == [
        "streamed pieces not sent (503 Service Unavailable): dropped until the coordinator answers",
        "the coordinator answers again; 5 streamed piece(s) were dropped meanwhile",
    ]


def test_tokens_asked_to_go_over_http_say_so_in_the_log_at_the_start(caplog):
    caplog.set_level("INFO", logger="inference.agent")
    stream = TokenStream(httpx.Client(base_url="http://coordinator"), over="http")
    stream.start()
    stream.close()

    assert "tokens go over HTTP, as asked (--tokens-over http)" in caplog.messages


def test_a_socket_closed_for_a_restart_is_opened_again_once_the_coordinator_answers(caplog):
    """A coordinator that stops closes the miner socket with 4503 ("connect again"): the pieces go
    over HTTP meanwhile, and over a new socket once it answers again, not over HTTP for good."""
    from websockets.sync.server import serve

    caplog.set_level("INFO", logger="inference.agent")
    connections, over_socket, over_http = [], [], []

    def coordinator_socket(socket):
        connections.append(socket)
        for raw in socket:
            message = json.loads(raw)
            if message["type"] == "job.tokens":
                if len(connections) == 1:  # the first socket's server stops
                    socket.close(4503, "restarting")
                    return
                over_socket.extend(piece["index"] for piece in message["tokens"])
            elif message["type"] == "ping":
                socket.send(json.dumps({"type": "pong"}))

    def coordinator_http(request):
        over_http.extend(piece["index"] for piece in json.loads(request.content)["tokens"])
        return httpx.Response(200, json={"refused_jobs": []})

    with serve(coordinator_socket, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.socket.getsockname()[1]}"
        http = httpx.Client(
            base_url=base,
            transport=httpx.MockTransport(coordinator_http),
            headers={"X-Api-Key": "key", "X-Miner-ID": "rig"},
        )
        stream = TokenStream(http)
        stream.start()
        for index in range(4):
            stream.put([{"job_id": "job-1", "index": index, "text": "w", "lease_token": "t"}])
            assert stream.flush(timeout=10)
        stream.close()
        server.shutdown()

    # Piece 0 went down with the first socket, piece 1 over HTTP, the rest over the second socket.
    assert len(connections) == 2
    assert over_http == [1]
    assert over_socket == [2, 3]
    assert stream.over == "ws"
