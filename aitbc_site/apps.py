from django.apps import AppConfig


class AitbcSiteConfig(AppConfig):
    name = "aitbc_site"
    verbose_name = "AITBC platform"

    def ready(self):
        from aitbc_site import schema  # noqa: F401  registers the OpenAPI auth extension
