from django.contrib.auth.models import AbstractUser
from django.db import models
from django.db.models import Q

from core.api.permissions import ApiKeyScope


class User(AbstractUser):
    """A person or program using the platform: client, miner owner or staff."""

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"


class ApiKey(models.Model):
    """An API key. Only its SHA-256 is stored; ``prefix`` finds the row without the secret."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    scope = models.CharField(max_length=10, choices=ApiKeyScope.choices)
    prefix = models.CharField(max_length=16, db_index=True, help_text="First characters of the key, for lookup.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"
        constraints = [
            models.CheckConstraint(condition=Q(scope__in=ApiKeyScope.values), name="apikey_scope_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.scope}, {self.user})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class WalletNonce(models.Model):
    """A one-time sign-in challenge for a wallet address: the client signs ``message``.

    Stored in clear: a nonce is a challenge, not a secret; what proves control of the address
    is the signature. ``used_at`` is set once, by a compare-and-set, when a login consumes it.
    """

    address = models.CharField(max_length=90)
    nonce = models.CharField(max_length=64, unique=True)
    message = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["address", "-created_at"], name="wallet_nonce_address_idx"),
            models.Index(fields=["expires_at"], name="wallet_nonce_expires_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(used_at__isnull=True) | Q(used_at__lte=models.F("expires_at")),
                name="wallet_nonce_used_before_expiry",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.nonce[:12]}… for {self.address}"


class UserSession(models.Model):
    """A wallet sign-in's bearer token (``X-Session-Token``). Only its SHA-256 is stored;
    ``prefix`` finds the row without the secret."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="sessions")
    wallet_address = models.CharField(max_length=90, blank=True, help_text="The address the user signed in with.")
    prefix = models.CharField(max_length=16, db_index=True, help_text="First characters of the token, for lookup.")
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    def is_active_at(self, moment) -> bool:
        return self.revoked_at is None and self.expires_at > moment
