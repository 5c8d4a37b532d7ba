import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    """The job's ``payment_id`` becomes a foreign key to its payment, whose status and charge the
    job no longer copies (``payment_status`` and ``amount_charged`` are read from the payment)."""

    dependencies = [
        ("jobs", "0008_receipt"),
        ("payments", "0004_payment_job_held_by_job"),
    ]

    operations = [
        migrations.AlterField(
            model_name="job", name="payment_id", field=models.CharField(max_length=40, null=True, blank=True)
        ),
        migrations.RunSQL(
            "UPDATE jobs_job SET payment_id = NULL WHERE payment_id = ''",
            reverse_sql="UPDATE jobs_job SET payment_id = '' WHERE payment_id IS NULL",
        ),
        # The same column, now under the name of the relation it holds.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveField(model_name="job", name="payment_id"),
                migrations.AddField(
                    model_name="job",
                    name="payment",
                    field=models.CharField(max_length=40, null=True, blank=True, db_column="payment_id"),
                ),
            ]
        ),
        migrations.AlterField(
            model_name="job",
            name="payment",
            field=models.OneToOneField(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="job",
                to="payments.payment",
                to_field="payment_id",
            ),
        ),
        # Going back, the copies are filled in from the payments again.
        migrations.RunSQL(
            migrations.RunSQL.noop,
            reverse_sql="UPDATE jobs_job SET "
            "payment_status = (SELECT p.status FROM payments_payment p WHERE p.payment_id = jobs_job.payment_id), "
            "amount_charged = (SELECT p.amount_paid FROM payments_payment p "
            "WHERE p.payment_id = jobs_job.payment_id AND p.status = 'released') "
            "WHERE payment_id IS NOT NULL",
        ),
        migrations.RemoveField(model_name="job", name="amount_charged"),
        migrations.RemoveField(model_name="job", name="payment_status"),
    ]
