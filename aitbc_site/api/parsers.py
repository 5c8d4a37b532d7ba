from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


def contains_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(contains_nul(k) or contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(contains_nul(v) for v in value)
    return False


class StrictJSONParser(JSONParser):
    """JSON bodies, refusing NUL characters, which PostgreSQL cannot store in text or jsonb."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON nested too deeply.") from None
        if contains_nul(data):
            raise ParseError("JSON strings may not contain NUL (\\u0000) characters.")
        return data
