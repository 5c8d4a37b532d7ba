from django.apps import AppConfig


class MinersConfig(AppConfig):
    name = "miners"
    verbose_name = "Miners"
