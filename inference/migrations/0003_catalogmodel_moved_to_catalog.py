from django.db import migrations


class Migration(migrations.Migration):
    """CatalogModel now belongs to the ``catalog`` app, which took over its table (catalog 0001)."""

    dependencies = [
        ("inference", "0002_offline_models"),
        ("catalog", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[migrations.DeleteModel(name="CatalogModel")]),
    ]
