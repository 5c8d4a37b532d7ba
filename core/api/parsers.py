"""JSON that the platform accepts: bounded in depth, and text that PostgreSQL and UTF-8 can hold.

Every JSON document from outside goes through here, whether it comes as an HTTP body
(``StrictJSONParser``) or as a WebSocket message (``load_json``), so no code behind it has to
recurse without bound or meet a string the database refuses.
"""

import json

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser, get_encoding
from rest_framework.utils.json import strict_constant

# Objects and arrays nested deeper than this are refused; real requests nest a handful of levels.
MAX_JSON_DEPTH = 64


class RefusedJSON(ValueError):
    """A JSON document the platform does not accept; the message says why."""


def is_storable_text(value: str) -> bool:
    """False for text PostgreSQL can't store (NUL) or UTF-8 can't encode (an unpaired surrogate)."""
    if "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_json(document) -> None:
    """Refuse ``document`` (parsed JSON) if it nests deeper than ``MAX_JSON_DEPTH`` or holds text
    that can't be stored. Walks with a stack of its own, so any depth costs no recursion."""
    pending = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, str):
            if not is_storable_text(value):
                raise RefusedJSON("JSON strings may not contain NUL (\\u0000) or unpaired surrogate characters.")
            continue
        if isinstance(value, dict):
            children = [*value.keys(), *value.values()]
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            raise RefusedJSON(f"JSON may nest objects and arrays at most {MAX_JSON_DEPTH} levels deep.")
        pending.extend((child, depth + 1) for child in children)


def accepted_unread(text: str) -> bool:
    """Whether ``check_json`` accepts whatever ``text`` parses to, judged from the text alone by
    scans at C speed, so that the walk is for the rare document that needs it: in ASCII text
    without a NUL or a ``\\u`` escape no string holds a NUL or an unpaired surrogate, and
    ``MAX_JSON_DEPTH`` opening brackets at most can't nest deeper than that."""
    return (
        text.isascii()
        and "\x00" not in text
        and "\\u" not in text
        and text.count("{") + text.count("[") <= MAX_JSON_DEPTH
    )


def load_json(text: str | bytes):
    """``json.loads`` for documents from outside: raises ``RefusedJSON`` (a ``ValueError``) for
    anything malformed, too deep or unstorable."""
    try:
        document = json.loads(text)
    except RecursionError:
        raise RefusedJSON(f"JSON may nest objects and arrays at most {MAX_JSON_DEPTH} levels deep.") from None
    if not (isinstance(text, str) and accepted_unread(text)):
        check_json(document)
    return document


class StrictJSONParser(JSONParser):
    """JSON bodies, refused (422 ``MALFORMED_REQUEST``) when ``check_json`` refuses them.

    Parses as DRF's ``JSONParser`` does (the same charset check, decoding, constants refused and
    error messages), keeping the text for ``accepted_unread``."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = get_encoding(parser_context or {})
        try:
            text = stream.read().decode(encoding)
            document = json.loads(text, parse_constant=strict_constant if self.strict else None)
        except RecursionError:
            raise ParseError(f"JSON may nest objects and arrays at most {MAX_JSON_DEPTH} levels deep.") from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        if not accepted_unread(text):
            try:
                check_json(document)
            except RefusedJSON as refused:
                raise ParseError(str(refused)) from None
        return document
