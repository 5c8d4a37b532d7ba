from rest_framework import authentication, exceptions

from accounts.services import api_key_authenticate, user_session_authenticate
from core.api.credentials import raw_key_from_headers


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """Authenticates ``X-Api-Key: <key>`` or ``Authorization: Bearer <key>``.

    ``request.auth`` is the :class:`accounts.models.ApiKey`, whose scope the permissions read.
    """

    def authenticate(self, request):
        raw_key = raw_key_from_headers(request.headers)
        if raw_key is None:
            return None
        return self.authenticated(api_key_authenticate(raw_key=raw_key))

    def authenticated(self, api_key):
        """``(user, api_key)``, or the 401 of a key that is not (or no longer) valid."""
        if api_key is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        return api_key.user, api_key

    def authenticate_header(self, request):
        return 'Bearer realm="api"'


class SessionTokenAuthentication(authentication.BaseAuthentication):
    """Authenticates ``X-Session-Token: <token>`` from a wallet sign-in (``POST /v1/users/login``).

    ``request.auth`` is the :class:`accounts.models.UserSession`; its user acts as a client.
    """

    def authenticate(self, request):
        raw_token = (request.headers.get("X-Session-Token") or "").strip()
        if not raw_token:
            return None
        session = user_session_authenticate(raw_token=raw_token)
        if session is None:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked session token.")
        return session.user, session

    def authenticate_header(self, request):
        return 'Session realm="api"'
