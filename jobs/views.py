"""The jobs' pages: submit a job, the user's jobs, one job followed live; the miners online."""

import json

from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.paginator import Paginator
from django.http import Http404, HttpResponseForbidden
from django.shortcuts import redirect, render
from django.views.generic import FormView, TemplateView

from catalog.selectors import catalog_with_miner_counts
from core.errors import ServiceError
from jobs import selectors
from jobs.forms import JobSubmitForm
from jobs.models import JobStatus
from jobs.services import job_submit

PAGE_SIZE = 20
USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "compute_ms")


class JobListView(LoginRequiredMixin, FormView):
    template_name = "jobs/jobs.html"
    form_class = JobSubmitForm

    def get_form_kwargs(self):
        return {**super().get_form_kwargs(), "catalog": list(catalog_with_miner_counts())}

    def handle_no_permission(self):
        if "rows" in self.request.GET:
            # The live list's request: a redirect to the login page is no rows to show. Answered,
            # not raised: a raised PermissionDenied is logged with its traceback, for a routine event.
            return HttpResponseForbidden("Signed out.")
        return super().handle_no_permission()

    def get(self, request, *args, **kwargs):
        if "rows" in request.GET:
            # The live list (jobs.js) re-reads its rows and pages when one of the user's jobs changes.
            return render(request, "jobs/_job_list.html", {"page": self._page()})
        return super().get(request, *args, **kwargs)

    def get_context_data(self, **kwargs):
        return {**super().get_context_data(**kwargs), "page": self._page()}

    def _page(self):
        jobs = selectors.jobs_of_client(user=self.request.user).filter(parent__isnull=True)
        page = Paginator(jobs, PAGE_SIZE).get_page(self.request.GET.get("page"))
        page.object_list = selectors.with_attempt_escrows(page.object_list)
        return page

    def form_valid(self, form):
        try:
            submission = job_submit(client=self.request.user, **form.submission())
        except ServiceError as error:
            form.add_error(None, error.detail)
            return self.form_invalid(form)
        return redirect("jobs:job", job_id=submission.job.pk)


class JobDetailView(LoginRequiredMixin, TemplateView):
    template_name = "jobs/job.html"

    def get_context_data(self, job_id, **kwargs):
        job = selectors.job_of_client(user=self.request.user, job_id=job_id)
        if job is None:
            raise Http404("No such job.")
        receipt = selectors.latest_receipt_of_job(job=job)
        document = receipt.served_document() if receipt else None
        opening = receipt.opening if receipt else None
        return {
            **super().get_context_data(**kwargs),
            "job": job,
            "job_request": _request_shown(job.payload),
            "output": _output_text(job.result),
            "usage": {name: (job.usage or {}).get(name) for name in USAGE_FIELDS},
            "embedding": _embedding_summary(job.result),
            "receipt": document,
            "receipt_pretty": json.dumps(document, indent=2, sort_keys=True) if document else "",
            "opening": opening,
            "opening_pretty": json.dumps(opening, indent=2, sort_keys=True) if opening else "",
            # What the receipt commits to, for the page's verifier and the bundle it offers.
            "contents": {"payload": job.payload, "result": job.result},
            "live": job.status in JobStatus.ACTIVE,
            "attempts": selectors.attempts_of(job=job) if job.verification else [],
        }


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)


def _request_shown(payload) -> dict:
    """What the client asked: a chat's messages, a prompt, or the texts to embed; and the params."""
    payload = payload if isinstance(payload, dict) else {}
    messages = payload.get("messages")
    inputs = payload.get("input")
    params = payload.get("params")
    return {
        "messages": [
            {"role": str(message.get("role", "")), "content": _text(message.get("content", ""))}
            for message in messages
            if isinstance(message, dict)
        ]
        if isinstance(messages, list)
        else [],
        "prompt": _text(payload["prompt"]) if payload.get("prompt") is not None else "",
        "inputs": [_text(text) for text in (inputs if isinstance(inputs, list) else [inputs])]
        if inputs is not None
        else [],
        "params": json.dumps(params, sort_keys=True) if isinstance(params, dict) and params else "",
    }


def _output_text(result) -> str:
    if not isinstance(result, dict):
        return ""
    text = result.get("text", result.get("output", ""))
    return text if isinstance(text, str) else json.dumps(text, indent=2)


def _embedding_summary(result) -> dict | None:
    if isinstance(result, dict) and isinstance(result.get("embeddings"), list):
        return {"count": len(result["embeddings"]), "dimensions": result.get("dimensions")}
    return None


class MinerListView(LoginRequiredMixin, TemplateView):
    """The miners online with what they did. Served here: its figures are counted from jobs."""

    template_name = "jobs/miners.html"

    def get_context_data(self, **kwargs):
        miners = list(selectors.online_miners_with_work())
        for miner in miners:
            miner.tokens_per_second = miner.units_last_hour / selectors.THROUGHPUT_WINDOW.total_seconds()
        return {
            **super().get_context_data(**kwargs),
            "miners": miners,
            "reputation_days": selectors.REPUTATION_WINDOW.days,
        }
