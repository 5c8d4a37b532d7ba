"""The admin home shows the network at a glance above the usual list of apps."""

from datetime import timedelta

from django.contrib import admin
from django.db.models import Count, Max, Q
from django.utils import timezone

from explorer.models import Block
from jobs.models import Job, JobStatus
from jobs.selectors import queue_depth_by_model
from miners.models import Miner, MinerStatus
from payments.models import Wallet, WalletKind


def at_a_glance() -> dict:
    """The figures on the admin home, a handful of aggregate queries."""
    hour_ago = timezone.now() - timedelta(hours=1)
    jobs = Job.objects.aggregate(
        queued=Count("id", filter=Q(status=JobStatus.QUEUED)),
        running=Count("id", filter=Q(status=JobStatus.RUNNING)),
        completed_last_hour=Count("id", filter=Q(status=JobStatus.COMPLETED, completed_at__gte=hour_ago)),
    )
    balances = dict(
        Wallet.objects.filter(kind__in=[WalletKind.TREASURY, WalletKind.FEES]).values_list("kind", "balance")
    )
    return {
        "miners_online": Miner.objects.filter(status=MinerStatus.ONLINE).count(),
        "jobs": jobs,
        "queue_depth": queue_depth_by_model(),
        "block_height": Block.objects.aggregate(height=Max("height"))["height"],
        # The treasury mints by going negative: what it has minted is minus its balance.
        "treasury_minted": -balances.get(WalletKind.TREASURY, 0),
        "fees_collected": balances.get(WalletKind.FEES, 0),
    }


def index_with_figures(request, extra_context=None):
    return _default_index(request, extra_context={"glance": at_a_glance(), **(extra_context or {})})


# The project uses the default admin site; wrapping its index (looked up when its URLs are
# built, after autodiscovery imports this module) avoids replacing the site in settings.
_default_index = admin.site.index
admin.site.index = index_with_figures
admin.site.index_template = "admin/aitbc_index.html"
