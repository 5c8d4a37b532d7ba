import json

from django.db import models


class Receipt(models.Model):
    """A signed receipt for a completed job. The signed JSON is stored byte for byte."""

    receipt_id = models.CharField(max_length=64, primary_key=True)
    job = models.ForeignKey("jobs.Job", on_delete=models.PROTECT, related_name="receipts")
    signed_json = models.TextField(editable=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["job", "-created_at"], name="receipt_job_idx")]

    def __str__(self) -> str:
        return self.receipt_id

    @property
    def document(self) -> dict:
        return json.loads(self.signed_json)
