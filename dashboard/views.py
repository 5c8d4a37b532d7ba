"""The dashboard's pages. Reads go through selectors, writes through the apps' services."""

import json

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse_lazy
from django.views.generic import FormView, TemplateView, View

from accounts.models import ApiKey, ApiKeyScope
from accounts.services import api_key_create, api_key_revoke, user_wallet_open
from catalog.selectors import catalog_with_miner_counts
from core.errors import ServiceError
from dashboard import selectors
from dashboard.forms import ApiKeyCreateForm, JobSubmitForm, SignUpForm, TopUpForm
from explorer import selectors as explorer
from jobs.models import JobStatus
from jobs.selectors import REPUTATION_WINDOW
from jobs.services import job_submit
from payments.exchange import exchange_payment_create, exchange_rates
from payments.selectors import wallet_by_address, wallet_entries, wallet_of

PAGE_SIZE = 20
RECENT_JOBS = 5
USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "compute_ms")


def _page(request, items, *, per_page: int = PAGE_SIZE):
    return Paginator(items, per_page).get_page(request.GET.get("page"))


class SignedInMixin(LoginRequiredMixin):
    login_url = reverse_lazy("dashboard:login")


# --- Signing in -------------------------------------------------------------------------------


class SignInView(auth_views.LoginView):
    template_name = "dashboard/login.html"
    redirect_authenticated_user = True
    next_page = reverse_lazy("dashboard:overview")


class SignUpView(FormView):
    template_name = "dashboard/signup.html"
    form_class = SignUpForm

    def form_valid(self, form):
        user = form.save()
        user_wallet_open(user=user)
        login(self.request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(self.request, f"Welcome, {user.username}. Your wallet is open.")
        return redirect("dashboard:overview")


# --- Overview -------------------------------------------------------------------------------


class OverviewView(SignedInMixin, TemplateView):
    template_name = "dashboard/overview.html"

    def get_context_data(self, **kwargs):
        user = self.request.user
        return {
            **super().get_context_data(**kwargs),
            "recent_jobs": selectors.jobs_of_client(user=user)[:RECENT_JOBS],
            "job_counts": selectors.job_counts_of_client(user=user),
            "wallet": wallet_of(user=user),
            "network": explorer.live_network_figures(),
        }


# --- API keys -------------------------------------------------------------------------------


class KeyListView(SignedInMixin, FormView):
    """The user's client keys; a new key is shown once, on the page that created it."""

    template_name = "dashboard/keys.html"
    form_class = ApiKeyCreateForm

    def get_context_data(self, **kwargs):
        keys = ApiKey.objects.filter(user=self.request.user).order_by("-created_at", "-id")
        return {**super().get_context_data(**kwargs), "keys": keys}

    def form_valid(self, form):
        issued = api_key_create(user=self.request.user, scope=ApiKeyScope.CLIENT, name=form.cleaned_data["name"])
        # Rendered, not redirected: the raw key must never be stored, not even in the session.
        return self.render_to_response(
            self.get_context_data(form=ApiKeyCreateForm(), new_key=issued.raw_key, new_key_name=issued.api_key.name)
        )


class KeyRevokeView(SignedInMixin, View):
    http_method_names = ["post"]

    def post(self, request, key_id):
        api_key = get_object_or_404(ApiKey, pk=key_id, user=request.user)
        api_key_revoke(api_key=api_key)
        messages.success(request, f"Key {api_key.prefix}… is revoked.")
        return redirect("dashboard:keys")


# --- Jobs ----------------------------------------------------------------------------------


class JobListView(SignedInMixin, FormView):
    template_name = "dashboard/jobs.html"
    form_class = JobSubmitForm

    def get_form_kwargs(self):
        return {**super().get_form_kwargs(), "catalog": list(catalog_with_miner_counts())}

    def handle_no_permission(self):
        if "rows" in self.request.GET:
            # The live list's request: a redirect to the login page is no rows to show.
            raise PermissionDenied("Signed out.")
        return super().handle_no_permission()

    def get(self, request, *args, **kwargs):
        if "rows" in request.GET:
            # The live list (jobs.js) re-reads its rows and pages when one of the user's jobs changes.
            return render(request, "dashboard/_job_list.html", {"page": self._page()})
        return super().get(request, *args, **kwargs)

    def get_context_data(self, **kwargs):
        return {**super().get_context_data(**kwargs), "page": self._page()}

    def _page(self):
        return _page(self.request, selectors.jobs_of_client(user=self.request.user))

    def form_valid(self, form):
        try:
            submission = job_submit(client=self.request.user, **form.submission())
        except ServiceError as error:
            form.add_error(None, error.detail)
            return self.form_invalid(form)
        return redirect("dashboard:job", job_id=submission.job.pk)


class JobDetailView(SignedInMixin, TemplateView):
    template_name = "dashboard/job.html"

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


# --- Wallet --------------------------------------------------------------------------------


class WalletView(SignedInMixin, FormView):
    template_name = "dashboard/wallet.html"
    form_class = TopUpForm

    def get_context_data(self, **kwargs):
        wallet = wallet_of(user=self.request.user)
        return {
            **super().get_context_data(**kwargs),
            "wallet": wallet,
            "entries": _page(self.request, wallet_entries(wallet)),
            "top_ups": selectors.exchange_payments_of(user=self.request.user)[:PAGE_SIZE],
            "rates": exchange_rates(),
        }

    def form_valid(self, form):
        try:
            payment = exchange_payment_create(
                user=self.request.user, aitbc_amount=form.cleaned_data["aitbc_amount"], btc_amount=form.btc_amount()
            )
        except ServiceError as error:
            form.add_error(None, error.detail)
            return self.form_invalid(form)
        messages.success(
            self.request, f"Send {payment.btc_amount} BTC to {payment.deposit_address} before {payment.expires_at:%c}."
        )
        return redirect("dashboard:wallet")


# --- Miners and network ----------------------------------------------------------------------


class MinerListView(SignedInMixin, TemplateView):
    template_name = "dashboard/miners.html"

    def get_context_data(self, **kwargs):
        miners = list(selectors.online_miners_with_work())
        for miner in miners:
            miner.tokens_per_second = miner.units_last_hour / selectors.THROUGHPUT_WINDOW.total_seconds()
        return {
            **super().get_context_data(**kwargs),
            "miners": miners,
            "reputation_days": REPUTATION_WINDOW.days,
        }


class NetworkView(TemplateView):
    """Public. The snapshot is rendered; ``ws/dashboard/`` ``network.stats`` events update it."""

    template_name = "dashboard/network.html"

    def get_context_data(self, **kwargs):
        return {
            **super().get_context_data(**kwargs),
            "snapshot": explorer.live_network_figures(),
            "stats": explorer.network_figures(),
        }


# --- Explorer (public) -----------------------------------------------------------------------


class BlockListView(TemplateView):
    template_name = "dashboard/explorer/blocks.html"

    def get_context_data(self, **kwargs):
        return {
            **super().get_context_data(**kwargs),
            "page": _page(self.request, explorer.blocks()),
            "stats": explorer.network_figures(),
        }


class BlockDetailView(TemplateView):
    template_name = "dashboard/explorer/block.html"

    def get_context_data(self, height, **kwargs):
        block = explorer.block_by_height_or_hash(str(height))
        if block is None:
            raise Http404("No such block.")
        return {**super().get_context_data(**kwargs), "sealed_block": block, "leaves": explorer.block_leaves(block)}


class TransactionDetailView(TemplateView):
    template_name = "dashboard/explorer/transaction.html"

    def get_context_data(self, tx_hash, **kwargs):
        leaf = explorer.leaf_by_hash(tx_hash)
        if leaf is None:
            raise Http404("No sealed transaction has this hash.")
        document = explorer.leaf_documents([leaf]).get((leaf.kind, leaf.ref))
        return {
            **super().get_context_data(**kwargs),
            "leaf": leaf,
            "document_pretty": json.dumps(document, indent=2, sort_keys=True) if document is not None else "",
            "proof": explorer.leaf_proof(leaf),
        }


class AddressDetailView(TemplateView):
    template_name = "dashboard/explorer/address.html"

    def get_context_data(self, address, **kwargs):
        wallet = wallet_by_address(address)
        if wallet is None:
            raise Http404("No wallet has this address.")
        return {
            **super().get_context_data(**kwargs),
            "wallet": wallet,
            "entries": _page(self.request, explorer.wallet_entries(wallet)),
        }


class ReceiptListView(TemplateView):
    template_name = "dashboard/explorer/receipts.html"

    def get_context_data(self, **kwargs):
        page = _page(self.request, explorer.explorer_receipts())
        rows = [{"receipt": receipt, "document": receipt.public_document()} for receipt in page]
        return {**super().get_context_data(**kwargs), "page": page, "rows": rows}
