from rest_framework.negotiation import DefaultContentNegotiation

# What nearly every API client sends, or nothing: the first renderer answers as DRF would choose it.
_ANY_OR_JSON = {"", "*/*", "application/json"}


class JSONFirstNegotiation(DefaultContentNegotiation):
    """DRF's negotiation, settled at once for the requests that leave no choice (no ``Accept``,
    ``*/*`` or ``application/json``, no format asked for): the first renderer, JSON. Every request
    pays for negotiation, and nearly all are these."""

    def select_renderer(self, request, renderers, format_suffix=None):
        accept = request.META.get("HTTP_ACCEPT", "")
        first = renderers[0]
        if (
            accept in _ANY_OR_JSON
            and not format_suffix
            and self.settings.URL_FORMAT_OVERRIDE not in request.query_params
            and first.media_type == "application/json"
        ):
            return first, first.media_type
        return super().select_renderer(request, renderers, format_suffix)
