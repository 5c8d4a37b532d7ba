import hashlib
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiKey, User
from accounts.services import api_key_revoke

JOB_BODY = {"payload": {"type": "inference", "prompt": "hi", "model": "llama3.2"}}


@pytest.fixture
def env_keys(settings):
    settings.API_KEYS_FROM_ENV = {"client": ["env-client-key"], "miner": ["env-miner-key"], "admin": []}


def api_with_key(raw_key: str) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_X_API_KEY=raw_key)
    return api


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def completed_job(client_api, miner_api, register_miner, submit_job):
    register_miner(miner_api)
    job = submit_job(client_api)
    assert miner_api.post("/v1/miners/poll", {"max_wait_seconds": 0}, format="json").status_code == 200
    done = miner_api.post(f"/v1/miners/{job['job_id']}/result", {"result": {"output": "secret"}}, format="json")
    assert done.status_code == 200, done.content
    return job


# --- Authentication -------------------------------------------------------------------


@pytest.mark.django_db
def test_request_without_a_key_is_401_with_detail_and_error_code():
    response = APIClient().post("/v1/jobs", JOB_BODY, format="json")
    assert response.status_code == 401
    assert set(response.json()) == {"detail", "error_code"}
    assert response.json()["error_code"] == "NOT_AUTHENTICATED"


@pytest.mark.django_db
def test_unknown_key_is_401():
    response = api_with_key("aitbc_this-key-was-never-issued").get("/v1/jobs")
    assert response.status_code == 401
    assert response.json()["error_code"] == "AUTHENTICATION_FAILED"


def test_key_with_a_known_prefix_but_wrong_secret_is_401(client_api):
    forged = client_api.raw_key[:12] + "not-the-secret"
    response = api_with_key(forged).get("/v1/jobs")
    assert response.status_code == 401


def test_bearer_authorization_header_works_like_x_api_key(client_api):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {client_api.raw_key}")
    response = api.post("/v1/jobs", JOB_BODY, format="json")
    assert response.status_code == 201
    assert response.json()["job_id"] in {str(pk) for pk in client_api.user.jobs.values_list("pk", flat=True)}


def test_unknown_bearer_key_is_401(db):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION="Bearer aitbc_not-a-real-key")
    assert api.get("/v1/jobs").status_code == 401


def test_revoked_key_is_401(client_api):
    assert client_api.get("/v1/jobs").status_code == 200
    api_key_revoke(api_key=client_api.api_key)
    response = client_api.get("/v1/jobs")
    assert response.status_code == 401
    assert response.json()["error_code"] == "AUTHENTICATION_FAILED"


def test_key_of_a_deactivated_user_is_401(client_api):
    User.objects.filter(pk=client_api.user.pk).update(is_active=False)
    assert client_api.get("/v1/jobs").status_code == 401


# --- Scopes ---------------------------------------------------------------------------


def test_miner_key_cannot_submit_jobs(miner_api):
    response = miner_api.post("/v1/jobs", JOB_BODY, format="json")
    assert response.status_code == 403
    assert response.json()["error_code"] == "PERMISSION_DENIED"


def test_client_key_cannot_poll_for_work(client_api):
    response = client_api.post("/v1/miners/poll", {"max_wait_seconds": 0}, format="json")
    assert response.status_code == 403
    assert response.json()["error_code"] == "PERMISSION_DENIED"


def test_admin_key_may_use_client_routes(make_api):
    admin = make_api("admin", "root")
    assert admin.post("/v1/jobs", JOB_BODY, format="json").status_code == 201


def test_admin_key_may_use_miner_routes(make_api, register_miner):
    admin = make_api("admin", "root", miner_id="staff-rig")
    assert register_miner(admin)["miner_id"] == "staff-rig"
    assert admin.post("/v1/miners/poll", {"max_wait_seconds": 0}, format="json").status_code == 204


def test_admin_key_sees_every_clients_jobs(make_api, client_api, other_client_api, submit_job):
    alices = submit_job(client_api)
    bobs = submit_job(other_client_api)
    admin = make_api("admin", "root")
    listed = {item["job_id"] for item in admin.get("/v1/jobs").json()["items"]}
    assert listed == {alices["job_id"], bobs["job_id"]}
    assert admin.get(f"/v1/jobs/{bobs['job_id']}").status_code == 200


# --- Ownership ------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/result", "/receipt"])
def test_another_clients_job_is_404_not_its_data(completed_job, client_api, other_client_api, suffix):
    url = f"/v1/jobs/{completed_job['job_id']}{suffix}"
    assert client_api.get(url).status_code == 200
    response = other_client_api.get(url)
    assert response.status_code == 404
    assert response.json()["error_code"] == "JOB_NOT_FOUND"
    assert b"secret" not in response.content


def test_another_client_cannot_cancel_a_job(client_api, other_client_api, submit_job):
    job = submit_job(client_api)
    response = other_client_api.post(f"/v1/jobs/{job['job_id']}/cancel")
    assert response.status_code == 404
    assert response.json()["error_code"] == "JOB_NOT_FOUND"
    assert client_api.get(f"/v1/jobs/{job['job_id']}").json()["status"] == "queued"


def test_other_clients_jobs_are_not_listed(client_api, other_client_api, submit_job):
    submit_job(client_api)
    assert other_client_api.get("/v1/jobs").json()["items"] == []


# --- Storage --------------------------------------------------------------------------


def test_only_the_sha256_of_a_key_is_stored(client_api):
    stored = ApiKey.objects.get(pk=client_api.api_key.pk)
    assert stored.key_hash == sha256(client_api.raw_key)
    assert stored.prefix == client_api.raw_key[:12]
    row = ApiKey.objects.filter(pk=stored.pk).values().get()
    assert not any(client_api.raw_key in str(value) for value in row.values())


def test_first_use_records_last_used_at(client_api):
    assert ApiKey.objects.get(pk=client_api.api_key.pk).last_used_at is None
    before = timezone.now()
    client_api.get("/v1/jobs")
    assert ApiKey.objects.get(pk=client_api.api_key.pk).last_used_at >= before


def test_last_used_at_is_not_rewritten_within_a_minute(client_api):
    recently = timezone.now() - timedelta(seconds=30)
    ApiKey.objects.filter(pk=client_api.api_key.pk).update(last_used_at=recently)
    client_api.get("/v1/jobs")
    assert ApiKey.objects.get(pk=client_api.api_key.pk).last_used_at == recently


def test_last_used_at_is_rewritten_after_a_minute(client_api):
    a_while_ago = timezone.now() - timedelta(seconds=61)
    ApiKey.objects.filter(pk=client_api.api_key.pk).update(last_used_at=a_while_ago)
    client_api.get("/v1/jobs")
    assert ApiKey.objects.get(pk=client_api.api_key.pk).last_used_at > a_while_ago + timedelta(seconds=60)


# --- Keys from the environment ---------------------------------------------------------


@pytest.mark.django_db
def test_key_from_environment_is_accepted_with_its_scope(env_keys):
    response = api_with_key("env-client-key").post("/v1/jobs", JOB_BODY, format="json")
    assert response.status_code == 201


@pytest.mark.django_db
def test_key_from_environment_gets_only_its_scope(env_keys):
    response = api_with_key("env-miner-key").post("/v1/jobs", JOB_BODY, format="json")
    assert response.status_code == 403


@pytest.mark.django_db
def test_key_from_environment_is_imported_hashed(env_keys):
    api_with_key("env-client-key").get("/v1/jobs")
    imported = ApiKey.objects.get()
    assert (imported.scope, imported.key_hash) == ("client", sha256("env-client-key"))
    assert "env-client-key" not in str(ApiKey.objects.values().get().values())


@pytest.mark.django_db
def test_key_from_environment_is_imported_once(env_keys):
    api = api_with_key("env-client-key")
    api.get("/v1/jobs")
    api.get("/v1/jobs")
    assert ApiKey.objects.count() == 1


@pytest.mark.django_db
def test_key_from_environment_can_be_revoked(env_keys):
    api = api_with_key("env-client-key")
    assert api.get("/v1/jobs").status_code == 200
    api_key_revoke(api_key=ApiKey.objects.get(key_hash=sha256("env-client-key")))
    assert api.get("/v1/jobs").status_code == 401


@pytest.mark.django_db
def test_key_not_in_the_environment_is_not_imported(env_keys):
    assert api_with_key("env-client-key-2").get("/v1/jobs").status_code == 401
    assert not ApiKey.objects.exists()


# --- create_api_key -------------------------------------------------------------------


@pytest.mark.django_db
def test_create_api_key_command_creates_the_user_and_prints_a_working_key():
    stdout = StringIO()
    call_command("create_api_key", "--scope", "client", "--user", "carol", stdout=stdout, stderr=StringIO())
    raw_key = stdout.getvalue().strip().splitlines()[-1]
    carol = User.objects.get(username="carol")
    assert ApiKey.objects.get(user=carol).key_hash == sha256(raw_key)
    response = api_with_key(raw_key).post("/v1/jobs", JOB_BODY, format="json")
    assert response.status_code == 201
