from rest_framework.response import Response

from core.api.pagination import StrictLimitOffsetPagination


class NextOffsetPagination(StrictLimitOffsetPagination):
    """``{"items", "limit", "offset", "next_offset"}``: the explorer's list shape.

    No total: counting a growing chain on every page would cost a scan. One row more than
    the page tells whether there is a next one.
    """

    default_limit = 50
    max_limit = 500
    # Past any real chain, and small enough for every database's integers.
    max_offset = 10**12

    def get_offset(self, request):
        return min(super().get_offset(request), self.max_offset)

    def paginate_queryset(self, queryset, request, view=None):
        self.request = request
        self.limit = self.get_limit(request)
        self.offset = self.get_offset(request)
        rows = list(queryset[self.offset : self.offset + self.limit + 1])
        self.has_next = len(rows) > self.limit
        return rows[: self.limit]

    @property
    def next_offset(self) -> int | None:
        return self.offset + self.limit if self.has_next else None

    def get_paginated_response(self, data):
        return Response({"items": data, "limit": self.limit, "offset": self.offset, "next_offset": self.next_offset})

    def get_paginated_response_schema(self, schema):
        return {
            "type": "object",
            "required": ["items", "limit", "offset", "next_offset"],
            "properties": {
                "items": schema,
                "limit": {"type": "integer", "example": self.default_limit},
                "offset": {"type": "integer", "example": 0},
                "next_offset": {"type": "integer", "nullable": True, "example": self.default_limit},
            },
        }
