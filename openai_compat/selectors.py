from jobs.models import Job, Receipt


def job_states(*, job_ids: list[str]) -> dict[str, tuple[str, int]]:
    """Each job's status and attempt, as stored now."""
    rows = Job.objects.filter(pk__in=job_ids).values_list("pk", "status", "attempt")
    return {str(pk): (status, attempt) for pk, status, attempt in rows}


def jobs_with_receipts(*, job_ids: list[str]) -> tuple[list[Job], list[str | None]]:
    """The jobs in the order given, and the id of each one's latest receipt (None before completion)."""
    jobs = {str(job.pk): job for job in Job.objects.filter(pk__in=job_ids)}
    latest: dict[str, str] = {}
    for job_id, receipt_id in (
        Receipt.objects.filter(job_id__in=job_ids).order_by("created_at").values_list("job_id", "receipt_id")
    ):
        latest[str(job_id)] = receipt_id
    return [jobs[job_id] for job_id in job_ids], [latest.get(job_id) for job_id in job_ids]
