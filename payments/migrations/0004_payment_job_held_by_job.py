import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    """The job holds the link to its payment (``jobs.Job.payment``, through ``payment_id``)."""

    dependencies = [
        ("jobs", "0006_failed_attempt_job_index"),
        ("payments", "0003_exchangepayment"),
    ]

    operations = [
        migrations.AlterField(
            model_name="payment",
            name="job",
            field=models.OneToOneField(
                null=True, on_delete=django.db.models.deletion.PROTECT, related_name="payment", to="jobs.job"
            ),
        ),
        # Going back, each payment finds its job again by the id the job holds.
        migrations.RunSQL(
            migrations.RunSQL.noop,
            reverse_sql="UPDATE payments_payment SET job_id = "
            "(SELECT j.id FROM jobs_job j WHERE j.payment_id = payments_payment.payment_id)",
        ),
        migrations.RemoveField(model_name="payment", name="job"),
    ]
