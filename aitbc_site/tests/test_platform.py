import multiprocessing
import os
import re
import subprocess
import sys
import time

import pytest
import redis
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.db import OperationalError
from rest_framework.request import Request
from rest_framework.test import APIClient, APIRequestFactory

from aitbc_site import health
from core.api import throttling
from core.env import env_bool, env_int

# --- Health, metrics, docs ------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/health", "/v1/health", "/health/live", "/health/ready"])
def test_health_endpoints_answer_without_a_key(path):
    response = APIClient().get(path)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json()["status"] == "ok"


@pytest.mark.django_db
def test_readiness_is_503_when_the_database_does_not_answer(monkeypatch):
    class BrokenConnection:
        def cursor(self):
            raise OperationalError("connection refused")

    monkeypatch.setattr(health, "connection", BrokenConnection())
    response = APIClient().get("/health/ready")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"


@pytest.mark.django_db
def test_metrics_are_prometheus_text():
    response = APIClient().get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    for family in (
        "api_requests_total",
        "api_request_duration_seconds",
        "active_jobs",
        "registered_miners",
        "queue_depth",
    ):
        assert f"# TYPE {family} " in response.content.decode()


@pytest.mark.django_db
def test_metrics_count_requests_by_route_and_status():
    APIClient().get("/health/live")
    text = APIClient().get("/metrics").content.decode()
    assert re.search(r'^api_requests_total\{method="GET",route="/health/live",status="200"\} [1-9]', text, re.M)
    assert re.search(r'^api_request_duration_seconds_count\{method="GET",route="/health/live"\} [1-9]', text, re.M)


def test_metrics_report_queue_depth_by_model(client_api, submit_job):
    submit_job(client_api, model="metrics-model")
    text = APIClient().get("/metrics").content.decode()
    assert re.search(r'^queue_depth\{model="metrics-model",priority="1"\} 1\.0$', text, re.M)
    assert re.search(r'^active_jobs\{status="queued"\} 1\.0$', text, re.M)


def test_metrics_report_registered_miners(miner_api, register_miner):
    register_miner(miner_api)
    text = APIClient().get("/metrics").content.decode()
    assert re.search(r'^registered_miners\{status="online"\} 1\.0$', text, re.M)


def test_metrics_summary_is_json(client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api)
    submit_job(client_api, model="metrics-model")
    response = APIClient().get("/v1/metrics")
    assert response.status_code == 200
    summary = response.json()
    assert summary["active_jobs"]["queued"] == 1
    assert summary["miners"]["online"] == 1
    assert {"model": "metrics-model", "depth": 1}.items() <= summary["queue_depth"][0].items()


@pytest.mark.django_db
def test_openapi_schema_is_served_as_json():
    response = APIClient().get("/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert {"/v1/jobs", "/v1/miners/poll", "/health"} <= set(schema["paths"])


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_pages_load_only_local_assets(path):
    response = APIClient().get(path)
    assert response.status_code == 200
    html = response.content.decode()
    assert re.search(r"""src=["']/static/drf_spectacular_sidecar/""", html)
    assert re.findall(r"https?://", html) == []
    assert re.findall(r"""(?:src|href)=["']?//""", html) == []


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/v1/no-such-route", "/v1/jobs/not-a-uuid"])
def test_unknown_api_path_is_json_404(path):
    response = APIClient().get(path)
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found.", "error_code": "NOT_FOUND"}


# --- Rate limits ----------------------------------------------------------------------


@pytest.fixture
def three_per_minute_for_clients(settings):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "client": "3/min"}
    # The limit is a fixed one-minute window: stay clear of its end so four requests share one.
    if time.time() % 60 > 55:
        time.sleep(60 - time.time() % 60)


def test_request_over_the_limit_is_429_with_retry_after(three_per_minute_for_clients, client_api):
    for _ in range(3):
        assert client_api.get("/v1/jobs").status_code == 200
    response = client_api.get("/v1/jobs")
    assert response.status_code == 429
    assert response.json()["error_code"] == "RATE_LIMITED"
    assert 1 <= int(response["Retry-After"]) <= 60


def test_rate_limit_is_per_key(three_per_minute_for_clients, client_api, other_client_api):
    for _ in range(4):
        client_api.get("/v1/jobs")
    assert client_api.get("/v1/jobs").status_code == 429
    assert other_client_api.get("/v1/jobs").status_code == 200


def test_miner_limit_is_separate_from_the_client_limit(three_per_minute_for_clients, miner_api, register_miner):
    register_miner(miner_api)
    for _ in range(5):
        assert miner_api.post("/v1/miners/heartbeat", {"inflight": 0}, format="json").status_code == 200


@pytest.fixture
def three_per_minute_for_anonymous(settings):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "anonymous": "3/min"}
    if time.time() % 60 > 55:
        time.sleep(60 - time.time() % 60)


def anonymous_allowed(forwarded_for: str) -> bool:
    """Whether the rate limit lets through an anonymous request from 192.0.2.1 carrying ``forwarded_for``."""
    request = Request(APIRequestFactory().get("/", HTTP_X_FORWARDED_FOR=forwarded_for, REMOTE_ADDR="192.0.2.1"))
    return throttling.ApiKeyRateThrottle().allow_request(request, view=None)


def test_anonymous_limit_cannot_be_dodged_with_a_forged_forwarded_for(three_per_minute_for_anonymous):
    assert [anonymous_allowed(f"198.51.100.{n}") for n in range(4)] == [True, True, True, False]


def test_behind_a_proxy_anonymous_callers_are_limited_by_the_address_it_saw(settings, three_per_minute_for_anonymous):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    assert [anonymous_allowed(f"10.0.0.{n}, 203.0.113.7") for n in range(4)] == [True, True, True, False]
    assert anonymous_allowed("10.0.0.9, 203.0.113.8") is True


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/health", "/health/live", "/health/ready"])
def test_health_probes_are_never_rate_limited(three_per_minute_for_anonymous, path):
    assert {APIClient().get(path).status_code for _ in range(5)} == {200}


def _hit_many(key: str, times: int) -> None:
    for _ in range(times):
        throttling.allows(key, limit=1000, window_seconds=60)


@pytest.mark.skipif(not django_settings.REDIS_URL, reason="needs Redis (set REDIS_URL); CI always sets it")
def test_rate_limit_counter_is_exact_across_processes(settings):
    key = f"{settings.RATE_LIMIT_KEY_PREFIX}:across-processes"
    fork = multiprocessing.get_context("fork")
    workers = [fork.Process(target=_hit_many, args=(key, 50)) for _ in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0] * 6
    assert int(redis.Redis.from_url(django_settings.REDIS_URL).get(key)) == 300


# --- Configuration from the environment -----------------------------------------------


@pytest.mark.parametrize("raw", ["true", "True", "1", "yes", "on", " ON "])
def test_env_bool_reads_true(monkeypatch, raw):
    monkeypatch.setenv("AITBC_TEST_FLAG", raw)
    assert env_bool("AITBC_TEST_FLAG", False) is True


@pytest.mark.parametrize("raw", ["false", "FALSE", "0", "no", "off"])
def test_env_bool_reads_false(monkeypatch, raw):
    monkeypatch.setenv("AITBC_TEST_FLAG", raw)
    assert env_bool("AITBC_TEST_FLAG", True) is False


def test_env_bool_uses_the_default_when_unset(monkeypatch):
    monkeypatch.delenv("AITBC_TEST_FLAG", raising=False)
    assert env_bool("AITBC_TEST_FLAG", True) is True


@pytest.mark.parametrize("raw", ["maybe", "2", "enabled", "truee"])
def test_env_bool_rejects_anything_else(monkeypatch, raw):
    monkeypatch.setenv("AITBC_TEST_FLAG", raw)
    with pytest.raises(ImproperlyConfigured, match="AITBC_TEST_FLAG must be a boolean"):
        env_bool("AITBC_TEST_FLAG", False)


def test_env_int_reads_an_integer(monkeypatch):
    monkeypatch.setenv("AITBC_TEST_NUMBER", " 42 ")
    assert env_int("AITBC_TEST_NUMBER", 7) == 42


@pytest.mark.parametrize("raw", ["forty-two", "4.2", "1e3"])
def test_env_int_rejects_non_integers(monkeypatch, raw):
    monkeypatch.setenv("AITBC_TEST_NUMBER", raw)
    with pytest.raises(ImproperlyConfigured, match="AITBC_TEST_NUMBER must be an integer"):
        env_int("AITBC_TEST_NUMBER", 7)


def test_env_int_rejects_values_below_the_minimum(monkeypatch):
    monkeypatch.setenv("AITBC_TEST_NUMBER", "0")
    with pytest.raises(ImproperlyConfigured, match="at least 1"):
        env_int("AITBC_TEST_NUMBER", 7, minimum=1)


def start_django(tmp_path, **env) -> subprocess.CompletedProcess:
    """Import the settings in a fresh interpreter with only ``env`` configured; it prints the secret key."""
    minimal = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": "aitbc_site.settings",
        "AITBC_DATA_DIR": str(tmp_path),
    }
    script = "import django; django.setup(); from django.conf import settings; print(settings.SECRET_KEY)"
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=django_settings.BASE_DIR,
        env={**minimal, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_settings_start_with_a_secret_key(tmp_path):
    started = start_django(tmp_path, SECRET_KEY="s3cret")
    assert started.returncode == 0, started.stderr


def test_settings_refuse_to_start_without_secret_key_when_debug_is_off(tmp_path):
    started = start_django(tmp_path)
    assert started.returncode != 0
    assert "SECRET_KEY is required when DEBUG is off" in started.stderr


def test_settings_start_without_secret_key_in_debug(tmp_path):
    started = start_django(tmp_path, DEBUG="true")
    assert started.returncode == 0, started.stderr


def test_settings_read_the_secret_key_bin_start_left_in_the_data_dir(tmp_path):
    (tmp_path / "secret_key").write_text("key-from-the-data-dir\n")
    started = start_django(tmp_path)
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "key-from-the-data-dir"


def test_secret_key_in_the_environment_wins_over_the_data_dir(tmp_path):
    (tmp_path / "secret_key").write_text("key-from-the-data-dir\n")
    started = start_django(tmp_path, SECRET_KEY="key-from-the-environment")
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "key-from-the-environment"


def test_manage_py_commands_run_without_secret_key_once_bin_start_generated_one(tmp_path):
    (tmp_path / "secret_key").write_text("generated-by-bin-start\n")
    environment = {"PATH": os.environ["PATH"], "AITBC_DATA_DIR": str(tmp_path)}
    checked = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=django_settings.BASE_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr
    assert "System check identified no issues" in checked.stdout


def test_settings_refuse_an_unparseable_debug_flag(tmp_path):
    started = start_django(tmp_path, SECRET_KEY="s3cret", DEBUG="maybe")
    assert started.returncode != 0
    assert "DEBUG must be a boolean" in started.stderr


def test_while_redis_is_unreachable_a_process_allows_its_share_of_the_limit(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    settings.RATE_LIMIT_PROCESSES = 2
    key = f"{settings.RATE_LIMIT_KEY_PREFIX}:redis-down"
    assert [throttling.allows(key, limit=5, window_seconds=60) for _ in range(4)] == [True, True, False, False]


def test_a_process_that_found_redis_down_asks_it_again_only_a_second_later(monkeypatch):
    counter = throttling._RedisCounter("redis://127.0.0.1:1/0")
    asked = []
    guard_call = throttling.guard_call
    monkeypatch.setattr(throttling, "guard_call", lambda *args: asked.append(1) or guard_call(*args))
    assert [counter.incr("aitbc-test:redis-down", 60) for _ in range(3)] == [None, None, None]
    assert len(asked) == 1
    time.sleep(throttling.REDIS_RETRY_SECONDS)
    assert counter.incr("aitbc-test:redis-down", 60) is None
    assert len(asked) == 2
