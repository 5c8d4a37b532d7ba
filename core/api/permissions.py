from django.db import models
from rest_framework.permissions import BasePermission


class ApiKeyScope(models.TextChoices):
    """What an API key may do. Stored on accounts' keys; the API's permissions are written in it."""

    CLIENT = "client", "Client"
    MINER = "miner", "Miner"
    AGENT = "agent", "Agent"
    ADMIN = "admin", "Admin"


def request_scope(request) -> str | None:
    """The caller's scope: its key's (an authenticated key is the request's ``auth`` and carries a
    ``scope``), ``client`` for a signed-in browser user, else None."""
    scope = getattr(request.auth, "scope", None)
    if scope is not None:
        return scope
    if request.user and request.user.is_authenticated:
        return ApiKeyScope.ADMIN if request.user.is_staff else ApiKeyScope.CLIENT
    return None


def is_admin(request) -> bool:
    return request_scope(request) == ApiKeyScope.ADMIN


class _ScopePermission(BasePermission):
    scope: str
    message = "This API key's scope does not allow this operation."

    def has_permission(self, request, view):
        scope = request_scope(request)
        return scope is not None and scope in (self.scope, ApiKeyScope.ADMIN)


class IsClient(_ScopePermission):
    scope = ApiKeyScope.CLIENT


class IsMiner(_ScopePermission):
    scope = ApiKeyScope.MINER


class IsAgent(_ScopePermission):
    scope = ApiKeyScope.AGENT


class IsAdmin(_ScopePermission):
    scope = ApiKeyScope.ADMIN
