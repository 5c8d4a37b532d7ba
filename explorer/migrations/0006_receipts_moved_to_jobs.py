from django.db import migrations


class Migration(migrations.Migration):
    """Receipts are jobs' now (jobs 0008 took their tables over): the explorer forgets its models."""

    dependencies = [
        ("explorer", "0005_receipt_opening"),
        ("jobs", "0008_receipt"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="ReceiptAttestation"),
                migrations.DeleteModel(name="Receipt"),
            ],
        ),
    ]
