from django.apps import AppConfig


class InferenceConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "inference"

    def ready(self):
        # Light imports only: web processes load this too, and must never import torch.
        from inference.tasks import wake_cluster_workers
        from jobs import wakeup

        wakeup.on_queued(wake_cluster_workers)
