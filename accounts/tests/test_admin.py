import hashlib
import re

import pytest
from django.urls import reverse

from accounts.models import ApiKey, User
from tests.admin_responses import messages_of

CHANGELIST = reverse("admin:accounts_apikey_changelist")


def listed_prefixes(response) -> set[str]:
    return {key.prefix for key in response.context["cl"].result_list}


@pytest.fixture
def keys(make_api):
    return {
        "alice-client": make_api("client", "alice").api_key,
        "alice-miner": make_api("miner", "alice").api_key,
        "bob-client": make_api("client", "bob").api_key,
    }


def test_user_changelist_opens(admin_client, keys):
    response = admin_client.get(reverse("admin:accounts_user_changelist"))
    assert response.status_code == 200
    assert {user.username for user in response.context["cl"].result_list} >= {"alice", "bob"}


def test_user_search_finds_the_user(admin_client, keys):
    response = admin_client.get(reverse("admin:accounts_user_changelist"), {"q": "bob"})
    assert [user.username for user in response.context["cl"].result_list] == ["bob"]


def test_user_change_page_lists_the_users_keys(admin_client, keys):
    alice = User.objects.get(username="alice")
    response = admin_client.get(reverse("admin:accounts_user_change", args=[alice.pk]))
    assert response.status_code == 200
    assert keys["alice-client"].prefix in response.content.decode()
    assert keys["bob-client"].prefix not in response.content.decode()


def test_api_key_changelist_opens(admin_client, keys):
    response = admin_client.get(CHANGELIST)
    assert response.status_code == 200
    assert listed_prefixes(response) == {key.prefix for key in keys.values()}


def test_api_key_change_page_opens(admin_client, keys):
    response = admin_client.get(reverse("admin:accounts_apikey_change", args=[keys["bob-client"].pk]))
    assert response.status_code == 200
    assert keys["bob-client"].prefix in response.content.decode()


def test_api_key_search_by_username(admin_client, keys):
    response = admin_client.get(CHANGELIST, {"q": "bob"})
    assert response.status_code == 200
    assert listed_prefixes(response) == {keys["bob-client"].prefix}


def test_api_key_filter_by_scope(admin_client, keys):
    response = admin_client.get(CHANGELIST, {"scope__exact": "miner"})
    assert response.status_code == 200
    assert listed_prefixes(response) == {keys["alice-miner"].prefix}


def test_api_key_filter_by_revoked(admin_client, keys):
    admin_client.post(
        CHANGELIST,
        {
            "action": "revoke_keys",
            "_selected_action": [keys["alice-miner"].pk],
            "apply": "1",
            "reason": "Fraud report 7",
        },
    )
    revoked = admin_client.get(CHANGELIST, {"revoked_at__isempty": "0"})
    active = admin_client.get(CHANGELIST, {"revoked_at__isempty": "1"})
    assert listed_prefixes(revoked) == {keys["alice-miner"].prefix}
    assert listed_prefixes(active) == {keys["alice-client"].prefix, keys["bob-client"].prefix}


def test_revoke_action_revokes_the_selected_keys_and_reports(admin_client, client_api, keys):
    response = admin_client.post(
        CHANGELIST,
        {
            "action": "revoke_keys",
            "_selected_action": [client_api.api_key.pk, keys["bob-client"].pk],
            "apply": "1",
            "reason": "Fraud report 7",
        },
        follow=True,
    )
    assert "Revoked 2 key(s)." in messages_of(response)
    assert set(ApiKey.objects.filter(revoked_at__isnull=False).values_list("pk", flat=True)) == {
        client_api.api_key.pk,
        keys["bob-client"].pk,
    }
    assert client_api.get("/v1/jobs").status_code == 401


def test_revoke_action_counts_only_keys_not_already_revoked(admin_client, keys):
    selected = {
        "action": "revoke_keys",
        "_selected_action": [keys["bob-client"].pk],
        "apply": "1",
        "reason": "Fraud report 7",
    }
    admin_client.post(CHANGELIST, selected)
    first_revoked_at = ApiKey.objects.get(pk=keys["bob-client"].pk).revoked_at
    response = admin_client.post(CHANGELIST, selected, follow=True)
    assert "Revoked 0 key(s)." in messages_of(response)
    assert ApiKey.objects.get(pk=keys["bob-client"].pk).revoked_at == first_revoked_at


def test_adding_a_key_shows_the_raw_key_once_and_stores_its_hash(admin_client, client_api):
    response = admin_client.post(
        reverse("admin:accounts_apikey_add"),
        {"user": client_api.user.pk, "name": "ci", "scope": "client"},
        follow=True,
    )
    assert response.status_code == 200
    shown = [m for m in messages_of(response) if "copy it now" in m]
    assert len(shown) == 1
    raw_key = re.search(r"(aitbc_\S+)", shown[0]).group(1)
    added = ApiKey.objects.get(name="ci")
    assert added.key_hash == hashlib.sha256(raw_key.encode()).hexdigest()
    assert ApiKey.objects.filter(user=client_api.user).count() == 2
    change_page = admin_client.get(reverse("admin:accounts_apikey_change", args=[added.pk]))
    assert raw_key not in change_page.content.decode()


def test_key_added_in_the_admin_authenticates(admin_client, client_api):
    response = admin_client.post(
        reverse("admin:accounts_apikey_add"), {"user": client_api.user.pk, "name": "ci", "scope": "client"}, follow=True
    )
    raw_key = re.search(r"(aitbc_\S+)", " ".join(messages_of(response))).group(1)
    client_api.credentials(HTTP_X_API_KEY=raw_key)
    assert client_api.get("/v1/jobs").status_code == 200


def test_staff_can_add_a_user(admin_client):
    form = {"username": "dave", "usable_password": "true", "password1": "a-long-passphrase-42"}
    inline_management = {"api_keys-TOTAL_FORMS": "0", "api_keys-INITIAL_FORMS": "0"}
    response = admin_client.post(
        reverse("admin:accounts_user_add"), {**form, "password2": form["password1"], **inline_management}
    )
    assert response.status_code == 302
    assert User.objects.get(username="dave").check_password("a-long-passphrase-42")


def test_api_key_add_page_opens(admin_client):
    response = admin_client.get(reverse("admin:accounts_apikey_add"))
    assert response.status_code == 200
    assert 'name="scope"' in response.content.decode()


def test_adding_a_user_in_the_admin_opens_their_wallet(admin_client):
    from payments.selectors import wallet_of

    response = admin_client.post(
        reverse("admin:accounts_user_add"),
        {
            "username": "erin",
            "usable_password": "true",
            "password1": "a long enough password",
            "password2": "a long enough password",
            "api_keys-TOTAL_FORMS": "0",
            "api_keys-INITIAL_FORMS": "0",
        },
    )

    assert response.status_code == 302, response.context["errors"]
    assert wallet_of(user=User.objects.get(username="erin")) is not None
