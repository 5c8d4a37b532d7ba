"""Queueing an OpenAI request's jobs (``jobs`` writes them; this app owns no table)."""

import uuid

from django.db import transaction

from catalog.selectors import catalog_entry
from jobs.models import Job
from jobs.services import job_submit
from miners.selectors import model_served_online
from openai_compat.errors import OpenAIError, model_not_found
from openai_compat.shapes import JobsRequest


def request_jobs_submit(*, client, request: JobsRequest, job_ids: list[uuid.UUID]) -> list[Job]:
    """Queue one job per choice of ``request``, with the ids ``job_ids``, all or none (one
    transaction), each escrowed from the client's wallet like any job.

    The model must be one the platform offers (an enabled catalog model of the request's kind) or
    one an online miner serves; anything else is 404 ``model_not_found``.
    """
    entry = catalog_entry(request.model)
    if entry is not None and entry.enabled:
        if entry.generates_text != request.generates_text:
            route = "/v1/chat/completions or /v1/completions" if entry.generates_text else "/v1/embeddings"
            raise OpenAIError(
                f"The model `{request.model}` is a {entry.task} model: use it with {route}.",
                param="model",
                code="model_not_supported",
            )
    elif entry is not None or not model_served_online(request.model):
        raise model_not_found(request.model)
    with transaction.atomic():
        return [
            job_submit(
                client=client, model=request.model, payload=payload, job_type=request.job_type, job_id=job_id
            ).job
            for payload, job_id in zip(request.payloads, job_ids, strict=True)
        ]
