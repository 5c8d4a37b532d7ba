from django.apps import AppConfig


class DashboardConfig(AppConfig):
    """Server-rendered pages for people: jobs, keys, wallet, miners, network and explorer."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "dashboard"
