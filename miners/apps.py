from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class MinersConfig(AppConfig):
    name = "miners"
    verbose_name = "Miners"

    def ready(self):
        from accounts.services import credentials_saved
        from miners.models import Miner

        # Requests read their miner from accounts' credentials cache: a miner saved is read again.
        post_save.connect(credentials_saved, sender=Miner, dispatch_uid="credentials-miner-saved")
        post_delete.connect(credentials_saved, sender=Miner, dispatch_uid="credentials-miner-deleted")
