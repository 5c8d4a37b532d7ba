from django.urls import reverse

from accounts.models import UserSession, WalletNonce
from accounts.tests.conftest import ask_nonce
from tests.admin_responses import messages_of

SESSIONS = reverse("admin:accounts_usersession_changelist")
NONCES = reverse("admin:accounts_walletnonce_changelist")


def test_session_changelist_lists_sessions_by_user(admin_client, sign_in, wallet):
    sign_in(wallet)
    response = admin_client.get(SESSIONS, {"q": wallet.address})
    assert response.status_code == 200
    assert [s.wallet_address for s in response.context["cl"].result_list] == [wallet.address]


def test_session_change_page_is_read_only_and_never_shows_the_token(admin_client, sign_in, wallet):
    api = sign_in(wallet)
    session = UserSession.objects.get()
    response = admin_client.get(reverse("admin:accounts_usersession_change", args=[session.pk]))
    assert response.status_code == 200
    page = response.content.decode()
    assert session.prefix in page
    assert api.signed_in["session_token"] not in page
    assert session.token_hash not in page
    assert 'name="_save"' not in page


def test_sessions_cannot_be_added_in_the_admin(admin_client):
    assert admin_client.get(reverse("admin:accounts_usersession_add")).status_code == 403


def test_revoke_action_signs_the_session_out(admin_client, sign_in, make_wallet):
    signed_out, kept = sign_in(make_wallet()), sign_in(make_wallet())
    session = UserSession.objects.get(user_id=signed_out.signed_in["user_id"])
    response = admin_client.post(SESSIONS, {"action": "revoke_sessions", "_selected_action": [session.pk]}, follow=True)
    assert "Revoked 1 session(s)." in messages_of(response)
    assert signed_out.get("/v1/users/me").status_code == 401
    assert kept.get("/v1/users/me").status_code == 200


def test_nonce_changelist_shows_used_and_unused_challenges(admin_client, anonymous_api, sign_in, wallet):
    sign_in(wallet)
    ask_nonce(anonymous_api, wallet.address)
    unused = admin_client.get(NONCES, {"used_at__isempty": "1"})
    used = admin_client.get(NONCES, {"used_at__isempty": "0"})
    assert unused.status_code == used.status_code == 200
    assert len(unused.context["cl"].result_list) == 1
    assert len(used.context["cl"].result_list) == 1


def test_nonce_change_page_opens_read_only(admin_client, anonymous_api, wallet):
    ask_nonce(anonymous_api, wallet.address)
    nonce = WalletNonce.objects.get()
    response = admin_client.get(reverse("admin:accounts_walletnonce_change", args=[nonce.pk]))
    assert response.status_code == 200
    assert nonce.nonce in response.content.decode()
    assert 'name="_save"' not in response.content.decode()
