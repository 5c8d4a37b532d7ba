from django.apps import AppConfig


class OpenAICompatConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "openai_compat"
    verbose_name = "OpenAI-compatible API"
