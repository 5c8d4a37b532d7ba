from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts and API keys"

    def ready(self):
        from accounts.models import ApiKey, User
        from accounts.services import credentials_saved

        for model in (User, ApiKey):
            post_save.connect(credentials_saved, sender=model, dispatch_uid=f"credentials-{model.__name__}-saved")
            post_delete.connect(credentials_saved, sender=model, dispatch_uid=f"credentials-{model.__name__}-deleted")
