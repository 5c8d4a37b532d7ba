import re

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response

_DIGITS = re.compile(r"[0-9]+")


def query_integer(request, name: str, *, default: int, minimum: int) -> int:
    """The query parameter ``name`` as the schema states it: one integer of ASCII digits, at least
    ``minimum``; absent, ``default``. Anything else is a 422, not silently the default."""
    values = request.query_params.getlist(name)
    if not values:
        return default
    if len(values) > 1 or not _DIGITS.fullmatch(values[0]) or int(values[0]) < minimum:
        raise ValidationError({name: [f"Must be one integer of at least {minimum}."]})
    return int(values[0])


class StrictLimitOffsetPagination(LimitOffsetPagination):
    """``limit`` (at least 1; more than ``max_limit`` serves ``max_limit``) and ``offset`` (at least 0)."""

    def get_limit(self, request):
        return min(
            query_integer(request, self.limit_query_param, default=self.default_limit, minimum=1), self.max_limit
        )

    def get_offset(self, request):
        return query_integer(request, self.offset_query_param, default=0, minimum=0)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        minimum = {self.limit_query_param: 1, self.offset_query_param: 0}
        for parameter in parameters:
            parameter["schema"]["minimum"] = minimum[parameter["name"]]
        return parameters


class ItemsLimitOffsetPagination(StrictLimitOffsetPagination):
    """``{"items", "total", "limit", "offset"}``: the list shape existing AITBC clients read."""

    default_limit = 50
    max_limit = 500

    def get_paginated_response(self, data):
        return Response({"items": data, "total": self.count, "limit": self.limit, "offset": self.offset})

    def get_paginated_response_schema(self, schema):
        return {
            "type": "object",
            "required": ["items", "total", "limit", "offset"],
            "properties": {
                "items": schema,
                "total": {"type": "integer", "example": 123},
                "limit": {"type": "integer", "example": self.default_limit},
                "offset": {"type": "integer", "example": 0},
            },
        }
