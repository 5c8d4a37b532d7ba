"""Where a request or a socket's handshake carries its API key."""


def raw_key_from_headers(headers) -> str | None:
    """The API key from ``X-Api-Key`` or ``Authorization: Bearer``, if either is present."""
    key = headers.get("X-Api-Key")
    if not key:
        scheme, _, credentials = (headers.get("Authorization") or "").partition(" ")
        key = credentials if scheme.lower() == "bearer" else None
    key = (key or "").strip()
    # A NUL can't be part of any key, and the database refuses to compare with one.
    return key if key and "\x00" not in key else None
