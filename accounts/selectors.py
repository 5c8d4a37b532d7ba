from accounts.models import User


def user_by_id(user_id: int) -> User | None:
    return User.objects.filter(pk=user_id).first()
