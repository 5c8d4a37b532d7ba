from django.db.models import QuerySet

from explorer.models import Receipt


def receipts_for_job(*, job_id) -> QuerySet[Receipt]:
    return Receipt.objects.filter(job_id=job_id).order_by("-created_at", "-receipt_id")
