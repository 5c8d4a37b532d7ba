from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response


class ItemsLimitOffsetPagination(LimitOffsetPagination):
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
