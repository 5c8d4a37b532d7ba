from django.db import migrations

from jobs.matching import create_claim_function


def create(apps, schema_editor):
    create_claim_function(schema_editor)


class Migration(migrations.Migration):
    """Replace ``jobs_claim`` with the function ``jobs.matching`` builds from its statement of the
    matching rule (the same rule as 0004's; from here on it has one home)."""

    dependencies = [("jobs", "0006_failed_attempt_job_index")]

    # Reversed, the function stays: 0004's states the same rule, and unapplying 0004 drops it.
    operations = [migrations.RunPython(create, migrations.RunPython.noop)]
