import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from accounts.models import ApiKey, ApiKeyScope, User
from aitbc_site import rawsql

KEY_TAG = "aitbc_"
PREFIX_LENGTH = 12
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    raw_key: str


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def key_prefix(raw_key: str) -> str:
    return raw_key[:PREFIX_LENGTH]


def user_get_or_create(*, username: str) -> User:
    user, _ = User.objects.get_or_create(username=username)
    return user


@transaction.atomic
def api_key_create(*, user: User, scope: str, name: str = "") -> IssuedKey:
    """Issue a new key; the raw key is returned here once and never stored."""
    if scope not in ApiKeyScope.values:
        raise ValueError(f"unknown scope {scope!r}")
    raw_key = KEY_TAG + secrets.token_urlsafe(32)
    api_key = ApiKey.objects.create(
        user=user, scope=scope, name=name, prefix=key_prefix(raw_key), key_hash=hash_key(raw_key)
    )
    return IssuedKey(api_key=api_key, raw_key=raw_key)


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    api_key.refresh_from_db(fields=["revoked_at"])
    return api_key


def api_key_authenticate(*, raw_key: str) -> ApiKey | None:
    """Return the active key matching ``raw_key``, or None.

    Keys configured through ``*_API_KEYS`` settings are imported (hashed) on first use, so
    they can be listed and revoked like any other key.
    """
    digest = hash_key(raw_key)
    api_key = next((k for k in _keys_with_prefix(key_prefix(raw_key)) if hmac.compare_digest(k.key_hash, digest)), None)
    if api_key is None:
        api_key = _api_key_import_from_settings(raw_key=raw_key)
    if api_key is None or api_key.revoked_at is not None or not api_key.user.is_active:
        return None
    _api_key_touch(api_key=api_key)
    return api_key


_KEYS_WITH_PREFIX = (
    f"SELECT {rawsql.columns(ApiKey, 'k')}, {rawsql.columns(User, 'u')} "
    "FROM accounts_apikey k JOIN accounts_user u ON u.id = k.user_id WHERE k.prefix = %s"
)


def _keys_with_prefix(prefix: str) -> list[ApiKey]:
    # Runs on every API request: one prepared statement rather than an ORM query.
    with connection.cursor() as cursor:
        cursor.execute(_KEYS_WITH_PREFIX, [prefix])
        rows = cursor.fetchall()
    keys = rawsql.instances(ApiKey, rows)
    for api_key, user in zip(keys, rawsql.instances(User, rows, start=len(ApiKey._meta.concrete_fields)), strict=True):
        api_key.user = user
    return keys


def _api_key_import_from_settings(*, raw_key: str) -> ApiKey | None:
    scope = next(
        (
            scope
            for scope, keys in settings.API_KEYS_FROM_ENV.items()
            if any(hmac.compare_digest(raw_key.encode(), k.encode()) for k in keys)
        ),
        None,
    )
    if scope is None:
        return None
    digest = hash_key(raw_key)
    user = user_get_or_create(username=f"{scope}-{digest[:12]}")
    try:
        with transaction.atomic():
            return ApiKey.objects.create(
                user=user, scope=scope, name="from environment", prefix=key_prefix(raw_key), key_hash=digest
            )
    except IntegrityError:  # imported concurrently by another request
        return ApiKey.objects.select_related("user").get(key_hash=digest)


def _api_key_touch(*, api_key: ApiKey) -> None:
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at >= LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now
