"""The error format: DRF's ``{"detail": ...}`` plus a machine-readable ``error_code``."""

from django.conf import settings
from django.core.exceptions import (
    DisallowedHost,
    PermissionDenied,
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
)
from django.db import DataError
from django.http import Http404, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from core.errors import ServiceError

_CODES = {
    exceptions.NotAuthenticated: "NOT_AUTHENTICATED",
    exceptions.AuthenticationFailed: "AUTHENTICATION_FAILED",
    exceptions.PermissionDenied: "PERMISSION_DENIED",
    exceptions.NotFound: "NOT_FOUND",
    exceptions.MethodNotAllowed: "METHOD_NOT_ALLOWED",
    exceptions.NotAcceptable: "NOT_ACCEPTABLE",
    exceptions.UnsupportedMediaType: "UNSUPPORTED_MEDIA_TYPE",
    exceptions.Throttled: "RATE_LIMITED",
    exceptions.ParseError: "MALFORMED_REQUEST",
    exceptions.ValidationError: "VALIDATION_ERROR",
}


def _error_code(exc: Exception) -> str:
    for exc_class, code in _CODES.items():
        if isinstance(exc, exc_class):
            return code
    return "ERROR"


def api_exception_handler(exc, context):
    if isinstance(exc, SuspiciousOperation):
        # Raised by Django while reading the request (its body's size, the number of fields).
        status_code, body = _suspicious_request(exc)
        return Response(body, status=status_code)
    if isinstance(exc, (DataError, OverflowError)):
        # A value the database cannot hold (NUL in a path, a huge offset): bad input, not a fault.
        exc = exceptions.ValidationError({"non_field_errors": ["A value in the request is out of range or invalid."]})
    if isinstance(exc, ServiceError):
        body = {"detail": exc.detail, "error_code": exc.code}
        if exc.errors:
            body["errors"] = exc.errors
        return Response(body, status=exc.status_code)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()

    if isinstance(exc, (exceptions.ValidationError, exceptions.ParseError)):
        # Validation and unparseable bodies are 422, as existing AITBC clients expect.
        errors = exc.detail
        detail = _first_message(errors) if isinstance(exc, exceptions.ValidationError) else str(errors)
        body = {"detail": detail, "error_code": _error_code(exc)}
        if isinstance(exc, exceptions.ValidationError):
            body["errors"] = errors if isinstance(errors, dict) else {"non_field_errors": errors}
        return Response(body, status=status.HTTP_422_UNPROCESSABLE_ENTITY)

    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(response.data, dict):
        response.data["error_code"] = _error_code(exc)
    else:
        response.data = {"detail": response.data, "error_code": _error_code(exc)}
    return response


def _first_message(errors, path: str = "") -> str:
    if isinstance(errors, dict):
        for field, value in errors.items():
            name = field if field != "non_field_errors" else ""
            return _first_message(value, f"{path}.{name}" if path and name else path or name)
    if isinstance(errors, list) and errors:
        return _first_message(errors[0], path)
    return f"{path}: {errors}" if path else str(errors)


def _suspicious_request(exc: SuspiciousOperation | None) -> tuple[int, dict]:
    if isinstance(exc, RequestDataTooBig):
        detail = f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."
        return 413, {"detail": detail, "error_code": "REQUEST_TOO_LARGE"}
    if isinstance(exc, TooManyFieldsSent):
        detail = f"The request has more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} parameters."
        return 400, {"detail": detail, "error_code": "TOO_MANY_FIELDS"}
    if isinstance(exc, DisallowedHost):
        return 400, {"detail": "The Host header names a host this server does not serve.", "error_code": "INVALID_HOST"}
    return 400, {"detail": str(exc or "") or "Bad request.", "error_code": "BAD_REQUEST"}


def _wants_json(request) -> bool:
    """JSON for programs; pages for the admin, and for a browser (it asks for HTML) outside ``/v1/`` and
    ``/api/``, so that a page that is not there is a page saying so."""
    if request.path.startswith("/admin/"):
        return False
    if request.path.startswith(("/v1/", "/api/")):
        return True
    return "text/html" not in request.headers.get("Accept", "")


def error_response(request, *, status: int, detail: str, code: str) -> HttpResponse:
    """An error answered outside DRF: ``{"detail", "error_code"}``, plain text for the admin."""
    if not _wants_json(request):
        return HttpResponse(detail, status=status, content_type="text/plain; charset=utf-8")
    return JsonResponse({"detail": detail, "error_code": code}, status=status)


def bad_request(request, exception=None):
    """Django's 400s (and the 413 for a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE``) in the API's shape."""
    if not _wants_json(request):
        return defaults.bad_request(request, exception)
    status_code, body = _suspicious_request(exception if isinstance(exception, SuspiciousOperation) else None)
    return JsonResponse(body, status=status_code)


def permission_denied(request, exception=None):
    if not _wants_json(request):
        return defaults.permission_denied(request, exception)
    return JsonResponse(
        {"detail": "You do not have permission to perform this action.", "error_code": "PERMISSION_DENIED"}, status=403
    )


def not_found(request, exception=None):
    if not _wants_json(request):
        return defaults.page_not_found(request, exception)
    return JsonResponse({"detail": "Not found.", "error_code": "NOT_FOUND"}, status=404)


def server_error(request):
    if not _wants_json(request):
        return defaults.server_error(request)
    return JsonResponse({"detail": "Internal server error.", "error_code": "INTERNAL_ERROR"}, status=500)
