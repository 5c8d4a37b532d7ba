import hashlib
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import UserSession, WalletNonce
from accounts.services import NONCE_RETENTION, SESSION_RETENTION, sign_in_records_purge, user_session_create
from accounts.tests.conftest import ask_nonce
from core.api.permissions import request_scope

pytestmark = pytest.mark.django_db


def token_of(api: APIClient) -> str:
    return api.signed_in["session_token"]


def test_session_token_is_stored_only_as_its_hash(sign_in, wallet):
    api = sign_in(wallet)
    session = UserSession.objects.get()
    assert session.token_hash == hashlib.sha256(token_of(api).encode()).hexdigest()
    assert token_of(api).startswith(session.prefix)
    assert session.wallet_address == wallet.address


def test_session_expires_after_the_configured_ttl(settings, sign_in, wallet):
    settings.USER_SESSION_TTL_SECONDS = 600
    sign_in(wallet)
    lifetime = UserSession.objects.get().expires_at - timezone.now()
    assert timedelta(seconds=590) < lifetime <= timedelta(seconds=600)


def test_logout_revokes_the_token(sign_in, wallet):
    api = sign_in(wallet)
    response = api.post("/v1/logout")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    after = api.get("/v1/users/me")
    assert after.status_code == 401
    assert after.json()["error_code"] == "AUTHENTICATION_FAILED"


def test_logout_leaves_the_users_other_sessions(sign_in, wallet):
    first, second = sign_in(wallet), sign_in(wallet)
    assert first.post("/v1/users/logout").status_code == 200
    assert first.get("/v1/users/me").status_code == 401
    assert second.get("/v1/users/me").status_code == 200


def test_expired_session_token_is_401(sign_in, wallet):
    api = sign_in(wallet)
    UserSession.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert api.get("/v1/users/me").status_code == 401


def test_unknown_session_token_is_401():
    api = APIClient()
    api.credentials(HTTP_X_SESSION_TOKEN="aitbcs_not-a-real-token")
    response = api.get("/v1/users/me")
    assert response.status_code == 401
    assert response.json()["error_code"] == "AUTHENTICATION_FAILED"


def test_session_of_a_disabled_user_is_401(sign_in, wallet, django_user_model):
    api = sign_in(wallet)
    django_user_model.objects.filter(pk=api.signed_in["user_id"]).update(is_active=False)
    assert api.get("/v1/users/me").status_code == 401


def test_logout_with_an_api_key_is_refused(client_api):
    response = client_api.post("/v1/logout")
    assert response.status_code == 422
    assert response.json()["error_code"] == "NOT_A_SESSION"
    assert client_api.get("/v1/users/me").status_code == 200


def test_logout_without_credentials_is_401():
    assert APIClient().post("/v1/logout").status_code == 401


def test_session_user_acts_as_a_client(sign_in, wallet, submit_job):
    api = sign_in(wallet)
    job = submit_job(api)
    assert api.get(f"/v1/jobs/{job['job_id']}").status_code == 200


def test_session_user_scope_is_client(rf, make_api):
    user = make_api("client", "dora").user
    request = rf.get("/")
    request.user, request.auth = user, user_session_create(user=user).session
    assert request_scope(request) == "client"


def test_session_users_get_the_user_rate_limit_per_user(settings, sign_in, make_wallet):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "user": "2/min", "client": "100/min"}
    wallet = make_wallet()
    first, second_session_same_user = sign_in(wallet), sign_in(wallet)
    other_user = sign_in(make_wallet())
    assert first.get("/v1/users/me").status_code == 200
    assert second_session_same_user.get("/v1/users/me").status_code == 200
    limited = first.get("/v1/users/me")
    assert limited.status_code == 429
    assert limited.json()["error_code"] == "RATE_LIMITED"
    assert "Retry-After" in limited.headers
    assert other_user.get("/v1/users/me").status_code == 200


def test_purge_deletes_only_long_ended_nonces_and_sessions(sign_in, wallet, anonymous_api):
    old, recent = sign_in(wallet), sign_in(wallet)
    unused = ask_nonce(anonymous_api, wallet.address)
    long_ago = timezone.now() - max(NONCE_RETENTION, SESSION_RETENTION) - timedelta(seconds=1)
    WalletNonce.objects.filter(nonce=unused["nonce"]).update(expires_at=long_ago)
    old_session = UserSession.objects.order_by("id").first()
    UserSession.objects.filter(pk=old_session.pk).update(expires_at=long_ago)

    assert sign_in_records_purge() == (1, 1)
    assert not WalletNonce.objects.filter(nonce=unused["nonce"]).exists()
    assert WalletNonce.objects.count() == 2
    assert not UserSession.objects.filter(pk=old_session.pk).exists()
    assert old.get("/v1/users/me").status_code == 401
    assert recent.get("/v1/users/me").status_code == 200
