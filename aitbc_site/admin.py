"""The admin home shows the network at a glance and its health above the usual list of apps; the
health panel is also served alone (``admin:health``) for the home to refresh it live."""

from urllib.parse import urlencode

from django.contrib import admin
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django_dramatiq.models import Task

from core.admin_bases import outcome_chart
from explorer.selectors import network_figures
from jobs.selectors import HEALTH_WINDOW, health_figures, outcomes_over_time
from miners.selectors import miner_states
from payments.selectors import escrow_held

# django_dramatiq records tasks only with its own result middleware, which the project does not use:
# its page would always be empty.
if admin.site.is_registered(Task):
    admin.site.unregister(Task)


def at_a_glance() -> dict:
    """The figures on the admin home (``explorer.selectors.network_figures``)."""
    figures = network_figures()
    return {
        "miners_online": figures["miners_online"],
        "jobs": {
            "queued": figures["jobs"]["queued"],
            "running": figures["jobs"]["running"],
            "completed_last_hour": figures["jobs_completed_last_hour"],
        },
        "block_height": figures["height"],
        "treasury_minted": figures["treasury_minted"],
        "fees_collected": figures["fees_collected"],
    }


def _list(name: str, **filters) -> str:
    """The admin list ``name`` (``app_model``) filtered by ``filters``."""
    return reverse(f"admin:{name}_changelist") + (f"?{urlencode(filters)}" if filters else "")


def _moment(when) -> str:
    """A time as the admin's date filters read it (local time)."""
    return timezone.localtime(when).isoformat(sep=" ", timespec="seconds")


def health() -> dict:
    """The health panel: each figure with the filtered list that shows what it counts."""
    figures = health_figures()
    since = _moment(figures["since"])
    states = miner_states()
    miner_links = {  # GPU miners, as counted: agents' seats are on the agents' own pages
        "online": _list("miners_miner", kind="gpu", status__exact="online", draining__exact=0),
        "draining": _list("miners_miner", kind="gpu", status__exact="online", draining__exact=1),
        "offline": _list("miners_miner", kind="gpu", status__exact="offline", banned="no", maintenance="no"),
        "banned": _list("miners_miner", kind="gpu", banned="yes"),
        "maintenance": _list("miners_miner", kind="gpu", maintenance="yes", banned="no"),
    }
    for row in figures["worst_miners"]:
        row["link"] = _list("jobs_failedattempt", miner__id__exact=row["miner_id"], created_at__gte=since)
    for row in figures["stuck_running"]:
        row["link"] = _list(
            "jobs_job", status__exact="running", model=row["model"], started_at__lt=_moment(row["started_before"])
        )
    for row in figures["unserved"]:
        row["link"] = _list("jobs_job", status__exact="queued", model=row["model"])
    for row in figures["queue"]:
        row["link"] = _list("jobs_job", status__exact="queued", model=row["model"], priority__exact=row["priority"])
    return {
        **figures,
        "failures_link": _list("jobs_failedattempt", created_at__gte=since),
        "expiries_link": _list("jobs_job", status__exact="expired", completed_at__gte=since),
        "miners": [(state, count, miner_links[state]) for state, count in states.items()],
        "escrow": escrow_held(),
        "escrow_link": _list("payments_payment", status__exact="escrowed"),
        "chart": outcome_chart(
            outcomes_over_time(since=figures["since"], step=HEALTH_WINDOW / 12),
            label="Jobs completed and attempts failed in the last hour, per 5 minutes",
        ),
        "as_of": timezone.now(),
    }


def index_with_figures(request, extra_context=None):
    context = {"glance": at_a_glance(), "health": health(), **(extra_context or {})}
    return _default_index(request, extra_context=context)


def health_panel(request):
    return TemplateResponse(request, "admin/aitbc_health.html", {"health": health()})


def urls_with_health():
    return [path("health/", admin.site.admin_view(health_panel), name="health"), *_default_get_urls()]


# The project uses the default admin site; wrapping its index and its URLs (looked up when its URLs
# are built, after autodiscovery imports this module) avoids replacing the site in settings.
_default_index = admin.site.index
_default_get_urls = admin.site.get_urls
admin.site.index = index_with_figures
admin.site.get_urls = urls_with_health
admin.site.index_template = "admin/aitbc_index.html"
