from django.conf import settings
from django.db import models
from django.utils import timezone


class StaffAction(models.Model):
    """One thing a staff member did in the console: who, what, on which objects, why, and the money
    it moved. Written by ``core.services.staff_action_record`` beside Django's own ``LogEntry`` (one
    per object, for "Recent actions" and each object's history); never changed afterwards."""

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="staff_actions")
    action = models.CharField(max_length=64, help_text="What was done: 'ban miner', 'credit wallets', …")
    reason = models.CharField(max_length=300, blank=True)
    summary = models.TextField(help_text="What changed, as the staff member was told, naming the objects.")
    targets = models.JSONField(default=list, help_text='The objects: [{"model": "miners.miner", "pk": "3", "repr": …}]')
    amount = models.DecimalField(
        max_digits=24, decimal_places=8, null=True, blank=True, help_text="AITBC moved, when the action moved money."
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "staff action"

    def __str__(self) -> str:
        return f"{self.action} by {self.actor_id} at {self.created_at:%Y-%m-%d %H:%M:%S}"
