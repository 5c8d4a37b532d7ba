"""Errors that services raise and the API turns into ``{"detail", "error_code"}`` responses."""


class ServiceError(Exception):
    status_code = 400

    def __init__(self, detail: str, *, code: str, status_code: int | None = None, errors: dict | None = None):
        super().__init__(detail)
        self.detail = detail
        self.code = code
        self.errors = errors
        if status_code is not None:
            self.status_code = status_code


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class Invalid(ServiceError):
    status_code = 422


class PaymentRequired(ServiceError):
    status_code = 402
