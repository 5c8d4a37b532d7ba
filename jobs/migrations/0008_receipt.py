"""Receipts move from the explorer to jobs, whose completions issue them: their tables keep their
rows and are renamed (``explorer_receipt`` to ``jobs_receipt``, ``explorer_receiptattestation`` to
``jobs_receiptattestation``). The explorer's trigger that queues each stored receipt for sealing
follows its table."""

import django.db.models.deletion
from django.db import migrations, models

MOVED = ("receipt", "receiptattestation")


def _move_content_types(apps, *, source: str, target: str) -> None:
    # Permissions and admin history point at the content types: they follow the models.
    ContentType = apps.get_model("contenttypes", "ContentType")
    if not ContentType.objects.filter(app_label=target, model__in=MOVED).exists():
        ContentType.objects.filter(app_label=source, model__in=MOVED).update(app_label=target)


def content_types_to_jobs(apps, schema_editor):
    _move_content_types(apps, source="explorer", target="jobs")


def content_types_to_explorer(apps, schema_editor):
    _move_content_types(apps, source="jobs", target="explorer")


class Migration(migrations.Migration):
    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("explorer", "0005_receipt_opening"),
        ("jobs", "0007_claim_function_from_matching"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="Receipt",
                    fields=[
                        ("receipt_id", models.CharField(max_length=64, primary_key=True, serialize=False)),
                        ("signed_json", models.TextField(editable=False)),
                        ("opening", models.JSONField(blank=True, editable=False, null=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                        (
                            "job",
                            models.ForeignKey(
                                db_index=False,
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="receipts",
                                to="jobs.job",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "explorer_receipt",
                        "ordering": ["-created_at"],
                        "indexes": [models.Index(fields=["job", "-created_at"], name="receipt_job_idx")],
                    },
                ),
                migrations.CreateModel(
                    name="ReceiptAttestation",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("alg", models.CharField(default="Ed25519", max_length=16)),
                        ("key_id", models.CharField(help_text="URL-safe base64 public key, no padding", max_length=64)),
                        ("sig", models.CharField(help_text="URL-safe base64 signature, no padding", max_length=128)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "receipt",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="attestations",
                                to="jobs.receipt",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "explorer_receiptattestation",
                        "ordering": ["created_at", "id"],
                        "constraints": [
                            models.UniqueConstraint(fields=("receipt", "key_id"), name="receipt_attestation_key_unique")
                        ],
                    },
                ),
            ],
        ),
        migrations.AlterModelTable(name="receipt", table=None),
        migrations.AlterModelTable(name="receiptattestation", table=None),
        migrations.RunPython(content_types_to_jobs, content_types_to_explorer),
    ]
