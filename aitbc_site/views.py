"""``/``: the network's public landing page, or a signed-in user's overview; ``/favicon.ico``."""

from django.contrib.auth.mixins import LoginRequiredMixin
from django.templatetags.static import static
from django.views.generic import RedirectView, TemplateView

from catalog.selectors import catalog_with_miner_counts
from explorer.selectors import live_network_figures, network_figures
from jobs.selectors import job_counts_of_client, jobs_of_client, with_attempt_escrows
from payments.selectors import wallet_of
from webhooks.selectors import disabled_endpoints_of

RECENT_JOBS = 5


class LandingView(TemplateView):
    """What the network is, its figures now, the explorer, and how to join as a client or a miner."""

    template_name = "aitbc_site/landing.html"

    def get_context_data(self, **kwargs):
        return {
            **super().get_context_data(**kwargs),
            "network": network_figures(),
            "catalog": list(catalog_with_miner_counts()),
            "coordinator_url": self.request.build_absolute_uri("/").rstrip("/"),
        }


class OverviewView(LoginRequiredMixin, TemplateView):
    template_name = "aitbc_site/overview.html"

    def get_context_data(self, **kwargs):
        user = self.request.user
        return {
            **super().get_context_data(**kwargs),
            "recent_jobs": with_attempt_escrows(jobs_of_client(user=user)[:RECENT_JOBS]),
            "job_counts": job_counts_of_client(user=user),
            "wallet": wallet_of(user=user),
            "network": live_network_figures(),
            "disabled_webhooks": list(disabled_endpoints_of(owner=user)),
        }


landing = LandingView.as_view()
overview = OverviewView.as_view()


def home(request, *args, **kwargs):
    page = overview if request.user.is_authenticated else landing
    return page(request, *args, **kwargs)


class FaviconView(RedirectView):
    """Browsers ask for ``/favicon.ico`` whatever the page links; the icon is a static SVG."""

    permanent = True

    def get_redirect_url(self, *args, **kwargs):
        return static("favicon.svg")
