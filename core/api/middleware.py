from core.api.exceptions import error_response
from core.api.parsers import is_storable_text


class StorableTextMiddleware:
    """Refuses a request whose path, query parameters or headers hold text that PostgreSQL or
    UTF-8 can't hold (NUL, an unpaired surrogate) before any view reads them: 422
    ``MALFORMED_REQUEST``. JSON bodies are checked where they are parsed (``StrictJSONParser``)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        texts = [request.path_info]
        for name, values in request.GET.lists():
            texts += [name, *values]
        texts += [value for name, value in request.META.items() if name.startswith("HTTP_") and isinstance(value, str)]
        if not all(is_storable_text(text) for text in texts):
            return error_response(
                request,
                status=422,
                detail="The path, query parameters and headers may not contain NUL or unpaired surrogate characters.",
                code="MALFORMED_REQUEST",
            )
        return self.get_response(request)
