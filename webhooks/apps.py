from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "webhooks"
    verbose_name = "Webhooks"

    def ready(self):
        from jobs import services as job_services
        from webhooks import services

        # Each job's end and each escrow's settlement queues its deliveries in the same transaction.
        job_services.when_jobs_end(services.deliveries_record)
