"""Queueing an OpenAI request's jobs (``jobs`` writes them; this app owns no table)."""

import uuid
from contextlib import nullcontext

from django.db import transaction

from catalog.selectors import catalog_entry
from jobs.consumers import jobs_offer_to_sockets, sockets_serve
from jobs.models import Job
from jobs.services import job_submit
from miners.selectors import model_served_online
from openai_compat.errors import OpenAIError, model_not_found
from openai_compat.shapes import JobsRequest


def request_jobs_submit(*, client, request: JobsRequest, job_ids: list[uuid.UUID]) -> list[Job]:
    """Queue one job per choice of ``request``, with the ids ``job_ids``, all or none (one
    transaction), each escrowed from the client's wallet like any job. Once they are committed, a
    miner connected to this process over ``ws/miners/`` is offered them first
    (``jobs.consumers.jobs_offer_to_sockets``).

    The model must be one the platform offers (an enabled catalog model of the request's kind) or
    one an online miner serves (a miner connected to this process over ``ws/miners/`` does, with
    no query); anything else is 404 ``model_not_found``.
    """
    entry = catalog_entry(request.model)
    if entry is not None and entry.enabled:
        if entry.generates_text != request.generates_text:
            route = "/v1/chat/completions or /v1/completions" if entry.generates_text else "/v1/embeddings"
            article = "an" if entry.task[:1] in "aeiou" else "a"
            raise OpenAIError(
                f"The model `{request.model}` is {article} {entry.task} model: use it with {route}.",
                param="model",
                code="model_not_supported",
            )
    elif entry is not None or not (sockets_serve(request.model) or model_served_online(request.model)):
        raise model_not_found(request.model)
    # A miner connected to this process takes the jobs at once, without the announcement's way.
    # One job is a transaction of its own already (with its escrow, if it has a price).
    together = transaction.atomic() if len(job_ids) > 1 else nullcontext()
    with jobs_offer_to_sockets(request.model, job_ids), together:
        return [
            job_submit(
                client=client, model=request.model, payload=payload, job_type=request.job_type, job_id=job_id
            ).job
            for payload, job_id in zip(request.payloads, job_ids, strict=True)
        ]
