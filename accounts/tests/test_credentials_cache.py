"""Keys and miners kept between requests (``accounts.services.credentials``): a request that finds
them kept runs no statement for them, and a revocation, a deactivation or a ban lands at the very
next request, in this process and in any other."""

import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import ApiKey
from accounts.services import api_key_revoke, credentials, credentials_changed
from jobs.services import miner_ban
from miners.models import Miner
from miners.services import miner_mark_maintenance, miner_unban

pytestmark = pytest.mark.django_db


def key_statements(api, path="/v1/jobs") -> tuple[int, int]:
    """The answer's status and how many statements read API keys."""
    with CaptureQueriesContext(connection) as queries:
        status = api.get(path).status_code
    return status, sum("FROM accounts_apikey k" in q["sql"] for q in queries)


def poll(miner_api) -> tuple[int, int]:
    with CaptureQueriesContext(connection) as queries:
        status = miner_api.post("/v1/miners/poll", {}, format="json").status_code
    return status, sum("FROM accounts_apikey k" in q["sql"] for q in queries)


def test_a_kept_key_is_not_read_again(client_api):
    assert key_statements(client_api) == (200, 1)
    assert key_statements(client_api) == (200, 0)


def test_a_revoked_key_is_refused_at_the_next_request(client_api):
    assert key_statements(client_api)[0] == 200
    api_key_revoke(api_key=client_api.api_key)
    assert client_api.get("/v1/jobs").status_code == 401


def test_a_revocation_in_another_process_lands_at_the_next_request(client_api):
    client_api.get("/v1/jobs")
    # What another process's api_key_revoke does: the row, then the counter every process checks.
    ApiKey.objects.filter(pk=client_api.api_key.pk).update(revoked_at=timezone.now())
    credentials_changed()
    assert client_api.get("/v1/jobs").status_code == 401


def test_a_deactivated_account_is_refused_at_the_next_request(client_api):
    client_api.get("/v1/jobs")
    user = client_api.user
    user.is_active = False
    user.save()  # as the admin's user form does
    assert client_api.get("/v1/jobs").status_code == 401


def test_a_change_made_without_the_counter_lands_within_max_age(client_api):
    client_api.get("/v1/jobs")
    ApiKey.objects.filter(pk=client_api.api_key.pk).update(revoked_at=timezone.now())
    assert client_api.get("/v1/jobs").status_code == 200  # still kept
    time.sleep(credentials.max_age + 0.05)
    assert client_api.get("/v1/jobs").status_code == 401


def test_nothing_is_kept_without_redis(client_api, settings):
    settings.REDIS_URL = ""
    assert key_statements(client_api) == (200, 1)
    assert key_statements(client_api) == (200, 1)


def test_a_kept_miner_is_not_read_again(miner_api, register_miner):
    register_miner(miner_api)
    assert poll(miner_api) == (204, 1)
    assert poll(miner_api) == (204, 0)


def test_a_banned_miner_is_refused_at_the_next_request(miner_api, register_miner, admin_user):
    register_miner(miner_api)
    assert poll(miner_api)[0] == 204
    miner_ban(miner=Miner.objects.get(miner_id="miner-1"), reason="cheating", actor=admin_user)
    response = miner_api.post("/v1/miners/poll", {}, format="json")
    assert (response.status_code, response.json()["error_code"]) == (403, "MINER_BANNED")
    miner_unban(miner=Miner.objects.get(miner_id="miner-1"), actor=admin_user)
    assert poll(miner_api)[0] == 204


def test_maintenance_lands_at_the_next_request(miner_api, register_miner):
    register_miner(miner_api)
    assert poll(miner_api)[0] == 204
    miner_mark_maintenance(miner=Miner.objects.get(miner_id="miner-1"), reason="new fans")
    response = miner_api.post("/v1/miners/poll", {}, format="json")
    assert (response.status_code, response.json()["error_code"]) == (403, "MINER_MAINTENANCE")


def test_a_miner_registered_after_a_request_named_it_is_found(miner_api, register_miner):
    assert miner_api.post("/v1/miners/poll", {}, format="json").status_code == 404
    register_miner(miner_api)
    assert poll(miner_api)[0] == 204
