from django.contrib.auth.models import AbstractUser
from django.db import models
from django.db.models import Q


class User(AbstractUser):
    """A person or program using the platform: client, miner owner or staff."""

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"


class ApiKeyScope(models.TextChoices):
    CLIENT = "client", "Client"
    MINER = "miner", "Miner"
    ADMIN = "admin", "Admin"


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
        constraints = [
            models.CheckConstraint(condition=Q(scope__in=ApiKeyScope.values), name="apikey_scope_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.scope}, {self.user})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
