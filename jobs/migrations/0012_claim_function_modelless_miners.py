from django.db import migrations

from jobs.matching import create_claim_function


def create(apps, schema_editor):
    create_claim_function(schema_editor)


class Migration(migrations.Migration):
    """``jobs_claim`` offers a miner that declares no models the jobs for models outside the catalog."""

    dependencies = [("jobs", "0011_admin_indexes"), ("catalog", "0001_initial")]

    # Reversed, the function stays: the previous one claimed nothing for such a miner, this one
    # claims the same as it for every other.
    operations = [migrations.RunPython(create, migrations.RunPython.noop)]
