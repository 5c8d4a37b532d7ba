from drf_spectacular import openapi
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import serializers


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.api.authentication.ApiKeyAuthentication"
    name = ["ApiKeyHeader", "BearerAuth"]

    def get_security_definition(self, auto_schema):
        return [
            {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
            {"type": "http", "scheme": "bearer"},
        ]


class SessionTokenAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.api.authentication.SessionTokenAuthentication"
    name = "SessionToken"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "X-Session-Token"}


class MinerKeyAuthenticationScheme(ApiKeyAuthenticationScheme):
    """The miner routes take the same keys (of miner or admin scope), read with the miner they name."""

    target_class = "miners.api.authentication.MinerKeyAuthentication"
    name = ["MinerApiKeyHeader", "MinerBearerAuth"]


class ErrorSerializer(serializers.Serializer):
    """Every error the API answers: ``{"detail", "error_code"}``, with per-field ``errors`` on validation errors."""

    detail = serializers.CharField()
    error_code = serializers.CharField(help_text="Machine-readable: VALIDATION_ERROR, JOB_NOT_FOUND, RATE_LIMITED, …")
    errors = serializers.DictField(required=False, help_text="Per-field messages (422 validation errors)")

    class Meta:
        ref_name = "Error"


_UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class AutoSchema(openapi.AutoSchema):
    """drf-spectacular's schema, plus the errors every operation can answer (each only where the
    code can produce it), all in the ``Error`` shape."""

    def get_operation(self, *args, **kwargs):
        operation = super().get_operation(*args, **kwargs)
        if operation is None:
            return None
        responses = operation["responses"]
        for code, description in self._possible_errors().items():
            responses.setdefault(str(code), {"description": description})
        error = {"application/json": {"schema": self.resolve_serializer(ErrorSerializer, "response").ref}}
        for code, response in responses.items():
            if int(code) >= 400 and "content" not in response:
                response["content"] = error
        operation["responses"] = dict(sorted(responses.items()))
        return operation

    def _possible_errors(self) -> dict[int, str]:
        errors = {
            400: "A request Django refuses to read: too many parameters (TOO_MANY_FIELDS), a Host not served",
            422: "Invalid parameters or body (VALIDATION_ERROR), or one that can't be parsed or stored "
            "(MALFORMED_REQUEST)",
        }
        if self.view.get_authenticators():
            errors[401] = "Invalid credentials (AUTHENTICATION_FAILED), or none where they are needed"
            errors[403] = (
                "The credentials' scope does not allow this (PERMISSION_DENIED), or a browser session's CSRF "
                "check failed"
            )
        if "{" in self.path:
            errors[404] = "Not found (or not yours)"
        if self.method in _UNSAFE_METHODS:
            errors[413] = "The request body is larger than REQUEST_MAX_BODY_BYTES (REQUEST_TOO_LARGE)"
            errors[415] = "The body is not JSON (UNSUPPORTED_MEDIA_TYPE)"
        if self.view.get_throttles():
            errors[429] = "Rate limited (RATE_LIMITED): Retry-After says when to try again"
        return errors
