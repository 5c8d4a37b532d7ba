"""The error format: DRF's ``{"detail": ...}`` plus a machine-readable ``error_code``."""

from django.core.exceptions import PermissionDenied
from django.db import DataError
from django.http import Http404, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from aitbc_site.errors import ServiceError

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


def _wants_json(request) -> bool:
    return not request.path.startswith("/admin/")


def not_found(request, exception=None):
    if not _wants_json(request):
        return defaults.page_not_found(request, exception)
    return JsonResponse({"detail": "Not found.", "error_code": "NOT_FOUND"}, status=404)


def server_error(request):
    if not _wants_json(request):
        return defaults.server_error(request)
    return JsonResponse({"detail": "Internal server error.", "error_code": "INTERNAL_ERROR"}, status=500)
