from accounts.models import ApiKey, ApiKeyScope
from accounts.services import api_key_authenticate, api_key_create


def test_creating_a_key_shows_it_once_and_it_authenticates(browser, alice):
    response = browser.post("/keys/", {"name": "my script"})
    assert response.status_code == 200
    raw_key = response.context["new_key"]
    assert raw_key.encode() in response.content
    api_key = ApiKey.objects.get(user=alice)
    assert (api_key.name, api_key.scope) == ("my script", ApiKeyScope.CLIENT)
    assert api_key_authenticate(raw_key=raw_key) == api_key
    again = browser.get("/keys/")
    assert raw_key.encode() not in again.content
    assert api_key.prefix.encode() in again.content


def test_key_list_shows_only_my_keys(browser, alice, bob):
    mine = api_key_create(user=alice, scope=ApiKeyScope.CLIENT, name="mine").api_key
    theirs = api_key_create(user=bob, scope=ApiKeyScope.CLIENT, name="theirs").api_key
    response = browser.get("/keys/")
    assert list(response.context["keys"]) == [mine]
    assert theirs.prefix.encode() not in response.content


def test_revoking_a_key_stops_it_working(browser, alice):
    issued = api_key_create(user=alice, scope=ApiKeyScope.CLIENT)
    response = browser.post(f"/keys/{issued.api_key.pk}/revoke/")
    assert response.status_code == 302
    issued.api_key.refresh_from_db()
    assert issued.api_key.revoked_at is not None
    assert api_key_authenticate(raw_key=issued.raw_key) is None
    assert b"revoked" in browser.get("/keys/").content


def test_another_users_key_cannot_be_revoked(browser, bob):
    issued = api_key_create(user=bob, scope=ApiKeyScope.CLIENT)
    assert browser.post(f"/keys/{issued.api_key.pk}/revoke/").status_code == 404
    issued.api_key.refresh_from_db()
    assert issued.api_key.revoked_at is None


def test_revoke_takes_only_post(browser, alice):
    issued = api_key_create(user=alice, scope=ApiKeyScope.CLIENT)
    assert browser.get(f"/keys/{issued.api_key.pk}/revoke/").status_code == 405


def test_key_list_reads_a_fixed_number_of_queries(browser, alice, django_assert_max_num_queries):
    for i in range(15):
        api_key_create(user=alice, scope=ApiKeyScope.CLIENT, name=f"key {i}")
    with django_assert_max_num_queries(6):
        response = browser.get("/keys/")
    assert len(response.context["keys"]) == 15
