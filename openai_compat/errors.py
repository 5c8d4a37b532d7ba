"""Errors as OpenAI answers them: ``{"error": {"message", "type", "param", "code"}}`` with its
status codes, so that the official clients raise the exception a program expects."""

import logging

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import Http404, JsonResponse
from rest_framework import exceptions

from core.errors import ServiceError

logger = logging.getLogger(__name__)

INVALID_REQUEST = "invalid_request_error"
# Job failures that the request itself caused: the same request would fail again.
REQUEST_ERRORS = {
    "INPUT_TOO_LONG": "context_length_exceeded",
    "INVALID_PARAMS": "invalid_value",
    "INVALID_PAYLOAD": "invalid_value",
    "UNSUPPORTED_MODEL": "model_not_supported",
    "UNSUPPORTED_TASK": "model_not_supported",
}


class OpenAIError(Exception):
    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict | None = None,
        extra: dict | None = None,
    ):
        super().__init__(message)
        self.message, self.status, self.type, self.param, self.code = message, status, type, param, code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict:
        return {
            "error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code, **self.extra}
        }

    def response(self) -> JsonResponse:
        return JsonResponse(self.body(), status=self.status, headers=self.headers)


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(
        f"The model `{model}` does not exist or you do not have access to it.",
        status=404,
        param="model",
        code="model_not_found",
    )


def as_openai_error(exc: Exception) -> OpenAIError:
    """The OpenAI error for anything a request may raise; an unexpected one is logged as a 500."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        return OpenAIError(str(exc.detail), status=401, code="invalid_api_key")
    if isinstance(exc, exceptions.PermissionDenied):
        return OpenAIError(str(exc.detail), status=403, code="permission_denied")
    if isinstance(exc, exceptions.Throttled):
        headers = {"Retry-After": str(int(exc.wait))} if exc.wait is not None else {}
        return OpenAIError(str(exc.detail), status=429, type="requests", code="rate_limit_exceeded", headers=headers)
    if isinstance(exc, exceptions.ValidationError):
        param, message = _first_error(exc.detail)
        return OpenAIError(message, param=param, code="invalid_value")
    if isinstance(exc, (exceptions.ParseError, exceptions.UnsupportedMediaType)):
        return OpenAIError(f"We could not parse the JSON body of your request: {exc.detail}", code="invalid_json")
    if isinstance(exc, exceptions.MethodNotAllowed):
        return OpenAIError(str(exc.detail), status=405, code="method_not_allowed")
    if isinstance(exc, RequestDataTooBig):
        return OpenAIError("The request body is too large.", status=413, code="request_too_large")
    if isinstance(exc, SuspiciousOperation):
        return OpenAIError(str(exc) or "Bad request.", code="bad_request")
    if isinstance(exc, Http404):
        return OpenAIError("Not found.", status=404, code="not_found")
    if isinstance(exc, ServiceError):
        return _service_error(exc)
    logger.exception("OpenAI-compatible request failed")
    return OpenAIError("The server had an error while processing your request.", status=500, type="server_error")


def _service_error(exc: ServiceError) -> OpenAIError:
    if exc.code == "INSUFFICIENT_FUNDS":
        # OpenAI's answer to an account out of credit; not worth retrying until it is topped up.
        return OpenAIError(
            exc.detail, status=429, type="insufficient_quota", code="insufficient_quota",
            headers={"X-Should-Retry": "false"},
        )  # fmt: skip
    param = next(iter(exc.errors), None) if exc.errors else None
    if param == "params" and isinstance(exc.errors["params"], dict):
        param = next(iter(exc.errors["params"]), param)
    code = REQUEST_ERRORS.get(exc.code, exc.code.lower())
    status = 400 if exc.status_code == 422 else exc.status_code
    return OpenAIError(exc.detail, status=status, param=param, code=code)


def _first_error(errors, path: str = "") -> tuple[str | None, str]:
    """The first field at fault (dotted, as OpenAI names nested ones) and its message."""
    if isinstance(errors, dict):
        for field, value in errors.items():
            name = "" if field == "non_field_errors" else str(field)
            return _first_error(value, f"{path}.{name}" if path and name else path or name)
    if isinstance(errors, list) and errors:
        if all(isinstance(item, dict) for item in errors):
            for index, item in enumerate(errors):
                if item:
                    return _first_error(item, f"{path}[{index}]")
        return _first_error(errors[0], path)
    param = path or None
    return param, f"{errors}" if param is None else f"Invalid value for '{param}': {errors}"
