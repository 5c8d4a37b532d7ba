from django.db.models import QuerySet

from accounts.models import ApiKey, User


def user_by_id(user_id: int) -> User | None:
    return User.objects.filter(pk=user_id).first()


def api_keys_of(*, user) -> QuerySet[ApiKey]:
    """The user's keys, revoked ones included, newest first."""
    return ApiKey.objects.filter(user=user).order_by("-created_at", "-id")
