import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from dashboard.tests.conftest import PASSWORD
from payments.selectors import wallet_of

SIGNED_IN_PAGES = ["/", "/keys/", "/jobs/", "/wallet/", "/miners/", "/jobs/8d3f4b9e-8d0a-4c8e-9d69-2f3b0c1f7a11/"]
PUBLIC_PAGES = ["/network/", "/explorer/", "/explorer/receipts/", "/login/", "/signup/"]


@pytest.mark.django_db
@pytest.mark.parametrize("url", SIGNED_IN_PAGES)
def test_pages_for_users_redirect_anonymous_visitors_to_login(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"/login/?next={url}"


@pytest.mark.django_db
@pytest.mark.parametrize("url", PUBLIC_PAGES)
def test_public_pages_render_for_anonymous_visitors(client, url):
    response = client.get(url)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert b'name="viewport"' in response.content


@pytest.mark.django_db
def test_sign_up_creates_a_user_with_a_password_and_a_wallet_and_signs_in(client):
    response = client.post("/signup/", {"username": "carol", "password1": PASSWORD, "password2": PASSWORD}, follow=True)
    assert response.redirect_chain == [("/", 302)]
    user = get_user_model().objects.get(username="carol")
    assert user.check_password(PASSWORD)
    assert wallet_of(user=user) is not None
    assert response.context["user"] == user
    assert b"Hello, carol" in response.content


@pytest.mark.django_db
def test_sign_up_refuses_mismatched_passwords(client):
    response = client.post("/signup/", {"username": "carol", "password1": PASSWORD, "password2": "other"})
    assert response.status_code == 200
    assert response.context["form"].errors["password2"]
    assert not get_user_model().objects.filter(username="carol").exists()


def test_log_in_with_a_password_returns_to_the_page_asked_for(alice, client):
    response = client.post("/login/", {"username": "alice", "password": PASSWORD, "next": "/keys/"})
    assert response.status_code == 302
    assert response["Location"] == "/keys/"
    assert client.get("/keys/").status_code == 200


def test_log_in_with_a_wrong_password_is_refused(alice, client):
    response = client.post("/login/", {"username": "alice", "password": "wrong"})
    assert response.status_code == 200
    assert response.context["form"].non_field_errors()
    assert "_auth_user_id" not in client.session


def test_log_out_ends_the_session(browser):
    response = browser.post("/logout/")
    assert response.status_code == 302
    assert browser.get("/keys/").status_code == 302


def test_forms_refuse_posts_without_a_csrf_token(alice):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    assert browser.post("/keys/", {"name": "ci"}).status_code == 403
    page = browser.get("/keys/")
    assert b'name="csrfmiddlewaretoken"' in page.content


def test_every_input_has_a_label(browser):
    for url in ("/keys/", "/jobs/", "/wallet/"):
        content = browser.get(url).content.decode()
        form = browser.get(url).context["form"]
        for field in form:
            assert f'for="{field.id_for_label}"' in content, (url, field.name)


def test_dashboard_routes_do_not_shadow_the_api(browser):
    assert browser.get("/v1/jobs")["Content-Type"].startswith("application/json")
    assert browser.get("/health")["Content-Type"].startswith("application/json")
