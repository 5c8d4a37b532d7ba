"""The admin home shows the network at a glance above the usual list of apps."""

from django.contrib import admin

from explorer.selectors import network_figures


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
        "queue_depth": figures["queue_by_priority"],
        "block_height": figures["height"],
        "treasury_minted": figures["treasury_minted"],
        "fees_collected": figures["fees_collected"],
    }


def index_with_figures(request, extra_context=None):
    return _default_index(request, extra_context={"glance": at_a_glance(), **(extra_context or {})})


# The project uses the default admin site; wrapping its index (looked up when its URLs are
# built, after autodiscovery imports this module) avoids replacing the site in settings.
_default_index = admin.site.index
admin.site.index = index_with_figures
admin.site.index_template = "admin/aitbc_index.html"
