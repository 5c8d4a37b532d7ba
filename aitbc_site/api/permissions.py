from rest_framework.permissions import BasePermission

from accounts.models import ApiKey, ApiKeyScope


def request_scope(request) -> str | None:
    """The caller's scope: its key's, ``client`` for a signed-in browser user, else None."""
    if isinstance(request.auth, ApiKey):
        return request.auth.scope
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


class IsAdmin(_ScopePermission):
    scope = ApiKeyScope.ADMIN
