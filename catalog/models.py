from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from catalog.payloads import PayloadError, check_default_params


class ModelTask(models.TextChoices):
    TEXT_GENERATION = "text-generation", "Text generation"
    CHAT = "chat", "Chat"
    EMBEDDING = "embedding", "Embedding"


class WeightsSource(models.TextChoices):
    DIRECTORY = "directory", "Local directory"
    PACKAGE = "package", "Python package that ships the weights"
    HUB = "hub", "Hugging Face Hub id (hosts that can download)"


class CatalogModel(models.Model):
    """A model the platform offers: jobs name it, workers and miners load it, prices come from it."""

    name = models.SlugField(max_length=200, unique=True, help_text="What jobs send as ``model``.")
    task = models.CharField(max_length=32, choices=ModelTask.choices)
    source_kind = models.CharField(max_length=16, choices=WeightsSource.choices)
    source = models.CharField(max_length=500, help_text="A path, a package name or a hub id, as the kind says.")
    description = models.CharField(max_length=300, blank=True)
    default_max_tokens = models.PositiveIntegerField(default=256)
    max_tokens = models.PositiveIntegerField(default=2048, help_text="The most tokens one job may ask for.")
    price_per_1k_tokens = models.DecimalField(max_digits=18, decimal_places=8, default=0)
    default_params = models.JSONField(
        default=dict,
        blank=True,
        help_text='Generation parameters a job gets when it sets none of its own, e.g. {"temperature": 0}.',
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(task__in=ModelTask.values), name="catalog_task_valid"),
            models.CheckConstraint(condition=Q(source_kind__in=WeightsSource.values), name="catalog_source_valid"),
            models.CheckConstraint(condition=Q(default_max_tokens__gte=1), name="catalog_default_tokens_positive"),
            models.CheckConstraint(
                condition=Q(max_tokens__gte=models.F("default_max_tokens")), name="catalog_max_tokens_covers_default"
            ),
            models.CheckConstraint(condition=Q(price_per_1k_tokens__gte=0), name="catalog_price_non_negative"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self):
        super().clean()
        try:
            check_default_params(self.default_params)
        except PayloadError as error:
            raise ValidationError({"default_params": error.message}) from None

    @property
    def generates_text(self) -> bool:
        return self.task != ModelTask.EMBEDDING
