import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from accounts.models import ApiKey, ApiKeyScope, User, UserSession, WalletNonce
from core import rawsql
from core.crypto.addresses import wallet_address
from core.errors import Conflict, ServiceError
from core.versioned import VersionedCache
from payments.models import Wallet
from payments.selectors import wallet_by_address
from payments.services import wallet_open

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


@transaction.atomic
def user_create(*, username: str, password: str | None = None, public_key: bytes | None = None, **fields) -> User:
    """A new account, its wallet open (with the welcome credits): under ``public_key`` when the
    account signs in with that key's wallet, else a custodial one."""
    user = User.objects.create_user(username=username, password=password, **fields)
    user_wallet_open(user=user, public_key=public_key)
    return user


def user_get_or_create(*, username: str) -> User:
    """The account named ``username``, created (see ``user_create``) if there is none."""
    user = User.objects.filter(username=username).first()
    if user is not None:
        return user
    try:
        with transaction.atomic():
            return user_create(username=username)
    except IntegrityError:  # created by a concurrent request
        return User.objects.get(username=username)


def user_wallet_open(*, user: User, public_key: bytes | None = None) -> Wallet:
    """Open the wallet of an account just made (staff's admin form, the sign-up page); an account
    that has one keeps it."""
    return wallet_open(user=user, public_key=public_key)


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
    credentials_changed()
    api_key.refresh_from_db(fields=["revoked_at"])
    return api_key


# API keys with their users (and the miners their requests name, ``miners.api.authentication``), kept
# by each process between requests while nothing about them changes (``core.versioned``).
credentials = VersionedCache("credentials")


def credentials_changed() -> None:
    """Keys, accounts or miners changed (a revocation, a ban...): every process reads them again at once."""
    credentials.bump()


def credentials_saved(sender, update_fields=None, **kwargs) -> None:
    """A receiver of ``post_save`` and ``post_delete`` for the models ``credentials`` keeps (connected
    in the apps' ``ready()``), so that a change made with ``save()`` (in the admin, say) lands at
    once too. A sign-in's ``last_login`` changes nothing kept."""
    if update_fields is None or set(update_fields) != {"last_login"}:
        credentials_changed()


def api_key_authenticate(*, raw_key: str) -> ApiKey | None:
    """Return the active key matching ``raw_key``, or None; kept in ``credentials`` once read."""
    api_key = credentials.read(("key", hash_key(raw_key)), partial(api_key_active, raw_key=raw_key))
    if api_key is not None:
        api_key_touch(api_key=api_key)
    return api_key


def api_key_active(*, raw_key: str, candidates: list[ApiKey] | None = None) -> ApiKey | None:
    """The active key matching ``raw_key``, or None, read from the database.

    ``candidates`` are the keys with ``raw_key``'s prefix when the caller has read them already
    (``keys_from_rows``). Keys configured through ``*_API_KEYS`` settings are imported (hashed)
    on first use, so they can be listed and revoked like any other key.
    """
    digest = hash_key(raw_key)
    if candidates is None:
        candidates = _keys_with_prefix(key_prefix(raw_key))
    api_key = next((k for k in candidates if hmac.compare_digest(k.key_hash, digest)), None)
    if api_key is None:
        api_key = _api_key_import_from_settings(raw_key=raw_key)
    if api_key is None or api_key.revoked_at is not None or not api_key.user.is_active:
        return None
    return api_key


# The keys with a prefix and their users: ``KEY_COLUMNS`` from ``KEY_TABLES``, ``k.prefix`` to match.
KEY_COLUMNS = f"{rawsql.columns(ApiKey, 'k')}, {rawsql.columns(User, 'u')}"
KEY_TABLES = "accounts_apikey k JOIN accounts_user u ON u.id = k.user_id"
_KEYS_WITH_PREFIX = f"SELECT {KEY_COLUMNS} FROM {KEY_TABLES} WHERE k.prefix = %s"
KEY_COLUMN_COUNT = len(ApiKey._meta.concrete_fields) + len(User._meta.concrete_fields)


def _keys_with_prefix(prefix: str) -> list[ApiKey]:
    # Runs on every API request: one prepared statement rather than an ORM query.
    with connection.cursor() as cursor:
        cursor.execute(_KEYS_WITH_PREFIX, [prefix])
        return keys_from_rows(cursor.fetchall())


def keys_from_rows(rows) -> list[ApiKey]:
    """The keys, with their users, of rows that start with ``KEY_COLUMNS``."""
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


def api_key_touch(*, api_key: ApiKey) -> None:
    """Record the key's use, at most once a ``LAST_USED_RESOLUTION``."""
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at >= LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now


# --- Wallet sign-in --------------------------------------------------------------------

SESSION_TAG = "aitbcs_"
SESSION_PREFIX_LENGTH = 16
# A login without ``nonce`` is checked against this many of the address's newest challenges.
LOGIN_CANDIDATE_NONCES = 32
# Used and expired challenges are kept this long, so a replay is told apart from a forgery.
NONCE_RETENTION = timedelta(hours=1)
SESSION_RETENTION = timedelta(days=30)


class SignInRejected(ServiceError):
    """The caller did not prove control of the wallet: 401 with a precise ``error_code``."""

    status_code = 401


@dataclass(frozen=True)
class IssuedSession:
    session: UserSession
    raw_token: str


@dataclass(frozen=True)
class WalletLogin:
    user: User
    wallet: Wallet
    issued: IssuedSession


def sign_in_message(*, domain: str, address: str, nonce: str, issued_at: datetime, expires_at: datetime) -> str:
    """The text a wallet signs to sign in: readable by a person, bound to one address and nonce."""
    return (
        "Sign in to AITBC Coordinator\n"
        f"Domain: {domain}\n"
        f"Address: {address}\n"
        f"Nonce: {nonce}\n"
        f"Issued: {issued_at.isoformat()}\n"
        f"Expires: {expires_at.isoformat()}"
    )


def wallet_nonce_issue(*, address: str, domain: str) -> WalletNonce:
    """A new single-use challenge for ``address``, valid for ``WALLET_NONCE_TTL_SECONDS``."""
    now = timezone.now().replace(microsecond=0)
    expires_at = now + timedelta(seconds=settings.WALLET_NONCE_TTL_SECONDS)
    nonce = secrets.token_hex(16)
    message = sign_in_message(domain=domain, address=address, nonce=nonce, issued_at=now, expires_at=expires_at)
    return WalletNonce.objects.create(address=address, nonce=nonce, message=message, expires_at=expires_at)


def _signed_nonce(*, address: str, verify_key: VerifyKey, signature: bytes, nonce: str | None) -> WalletNonce:
    candidates = WalletNonce.objects.filter(address=address)
    if nonce is not None:
        candidates = candidates.filter(nonce=nonce)
    candidates = list(candidates.order_by("-created_at", "-id")[:LOGIN_CANDIDATE_NONCES])
    if not candidates:
        raise SignInRejected("No sign-in nonce was issued for this address.", code="NONCE_NOT_FOUND")
    for candidate in candidates:
        try:
            verify_key.verify(candidate.message.encode(), signature)
        except BadSignatureError:
            continue
        return candidate
    raise SignInRejected("The signature does not match a sign-in message for this address.", code="INVALID_SIGNATURE")


def _nonce_rejection(nonce: WalletNonce) -> SignInRejected:
    if nonce.used_at is not None:
        return SignInRejected("This nonce has already been used; request a new one.", code="NONCE_USED")
    return SignInRejected("This nonce has expired; request a new one.", code="NONCE_EXPIRED")


def _wallet_owner(*, address: str, public_key: bytes) -> tuple[User, Wallet]:
    wallet = wallet_by_address(address)
    if wallet is not None:
        if wallet.user is None:
            raise ServiceError("This address cannot sign in.", code="WALLET_NOT_LOGINABLE", status_code=403)
        return wallet.user, wallet
    user = User.objects.filter(username=address).first()
    if user is None:
        try:
            with transaction.atomic():
                user = user_create(username=address, public_key=public_key)
        except IntegrityError:  # created by a concurrent sign-in
            user = User.objects.get(username=address)
    wallet = wallet_open(user=user, public_key=public_key)
    if wallet.address != address:  # an account was given this address as its name by someone else
        raise Conflict("An account with this address as its name already has another wallet.", code="WALLET_TAKEN")
    return user, wallet


@transaction.atomic
def wallet_login(*, address: str, public_key: bytes, signature: bytes, nonce: str | None = None) -> WalletLogin:
    """Sign in with a wallet: ``signature`` over one of the address's unused, unexpired nonces'
    messages, by the key the address derives from. Consumes the nonce (once, whoever races),
    finds the wallet's user or creates one named after the address, and opens a session."""
    if wallet_address(public_key) != address:
        raise SignInRejected("The public key does not derive this wallet address.", code="ADDRESS_MISMATCH")
    signed = _signed_nonce(address=address, verify_key=VerifyKey(public_key), signature=signature, nonce=nonce)
    now = timezone.now()
    consumed = WalletNonce.objects.filter(pk=signed.pk, used_at__isnull=True, expires_at__gt=now).update(used_at=now)
    if not consumed:
        signed.refresh_from_db(fields=["used_at"])
        raise _nonce_rejection(signed)
    user, wallet = _wallet_owner(address=address, public_key=public_key)
    if not user.is_active:
        raise ServiceError("This account is disabled.", code="ACCOUNT_DISABLED", status_code=403)
    return WalletLogin(user=user, wallet=wallet, issued=user_session_create(user=user, wallet_address=address))


def user_session_create(*, user: User, wallet_address: str = "") -> IssuedSession:
    """A new session token for ``user``; the raw token is returned here once and never stored."""
    raw_token = SESSION_TAG + secrets.token_urlsafe(32)
    session = UserSession.objects.create(
        user=user,
        wallet_address=wallet_address,
        prefix=raw_token[:SESSION_PREFIX_LENGTH],
        token_hash=hash_key(raw_token),
        expires_at=timezone.now() + timedelta(seconds=settings.USER_SESSION_TTL_SECONDS),
    )
    return IssuedSession(session=session, raw_token=raw_token)


def user_session_revoke(*, session: UserSession) -> UserSession:
    UserSession.objects.filter(pk=session.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    session.refresh_from_db(fields=["revoked_at"])
    return session


def user_session_authenticate(*, raw_token: str) -> UserSession | None:
    """The active, unexpired session whose token is ``raw_token`` (its user active), or None."""
    if "\x00" in raw_token:
        return None
    digest = hash_key(raw_token)
    sessions = UserSession.objects.select_related("user").filter(prefix=raw_token[:SESSION_PREFIX_LENGTH])
    session = next((s for s in sessions if hmac.compare_digest(s.token_hash, digest)), None)
    now = timezone.now()
    if session is None or not session.is_active_at(now) or not session.user.is_active:
        return None
    if session.last_used_at is None or now - session.last_used_at >= LAST_USED_RESOLUTION:
        UserSession.objects.filter(pk=session.pk).update(last_used_at=now)
        session.last_used_at = now
    return session


def sign_in_records_purge() -> tuple[int, int]:
    """Delete nonces and sessions that ended long enough ago; returns (nonces, sessions) deleted."""
    now = timezone.now()
    nonces, _ = WalletNonce.objects.filter(expires_at__lt=now - NONCE_RETENTION).delete()
    sessions, _ = UserSession.objects.filter(expires_at__lt=now - SESSION_RETENTION).delete()
    return nonces, sessions
