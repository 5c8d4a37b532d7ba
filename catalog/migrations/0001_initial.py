"""The model catalog moves here from ``inference``: this app takes over the table as it is (state
only), then renames it ``catalog_catalogmodel``. Its rows, constraints and staff permissions stay."""

from django.db import migrations, models


def _relabel_content_type(apps, *, old: str, new: str) -> None:
    # Permissions and admin history point at the content type: moving it keeps staff's grants.
    ContentType = apps.get_model("contenttypes", "ContentType")
    if not ContentType.objects.filter(app_label=new, model="catalogmodel").exists():
        ContentType.objects.filter(app_label=old, model="catalogmodel").update(app_label=new)


def content_type_to_catalog(apps, schema_editor):
    _relabel_content_type(apps, old="inference", new="catalog")


def content_type_to_inference(apps, schema_editor):
    _relabel_content_type(apps, old="catalog", new="inference")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("inference", "0002_offline_models"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="CatalogModel",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        (
                            "name",
                            models.SlugField(help_text="What jobs send as ``model``.", max_length=200, unique=True),
                        ),
                        (
                            "task",
                            models.CharField(
                                choices=[
                                    ("text-generation", "Text generation"),
                                    ("chat", "Chat"),
                                    ("embedding", "Embedding"),
                                ],
                                max_length=32,
                            ),
                        ),
                        (
                            "source_kind",
                            models.CharField(
                                choices=[
                                    ("directory", "Local directory"),
                                    ("package", "Python package that ships the weights"),
                                    ("hub", "Hugging Face Hub id (hosts that can download)"),
                                ],
                                max_length=16,
                            ),
                        ),
                        (
                            "source",
                            models.CharField(
                                help_text="A path, a package name or a hub id, as the kind says.", max_length=500
                            ),
                        ),
                        ("description", models.CharField(blank=True, max_length=300)),
                        ("default_max_tokens", models.PositiveIntegerField(default=256)),
                        (
                            "max_tokens",
                            models.PositiveIntegerField(default=2048, help_text="The most tokens one job may ask for."),
                        ),
                        ("price_per_1k_tokens", models.DecimalField(decimal_places=8, default=0, max_digits=18)),
                        ("enabled", models.BooleanField(default=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                    ],
                    options={
                        "db_table": "inference_catalogmodel",
                        "ordering": ["name"],
                        "constraints": [
                            models.CheckConstraint(
                                condition=models.Q(("task__in", ["text-generation", "chat", "embedding"])),
                                name="catalog_task_valid",
                            ),
                            models.CheckConstraint(
                                condition=models.Q(("source_kind__in", ["directory", "package", "hub"])),
                                name="catalog_source_valid",
                            ),
                            models.CheckConstraint(
                                condition=models.Q(("default_max_tokens__gte", 1)),
                                name="catalog_default_tokens_positive",
                            ),
                            models.CheckConstraint(
                                condition=models.Q(("max_tokens__gte", models.F("default_max_tokens"))),
                                name="catalog_max_tokens_covers_default",
                            ),
                            models.CheckConstraint(
                                condition=models.Q(("price_per_1k_tokens__gte", 0)), name="catalog_price_non_negative"
                            ),
                        ],
                    },
                ),
            ],
        ),
        migrations.AlterModelTable(name="catalogmodel", table=None),
        migrations.RunPython(content_type_to_catalog, content_type_to_inference),
    ]
