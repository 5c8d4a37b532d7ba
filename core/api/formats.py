"""How the API writes values that JSON has no type for."""


def iso_datetime(value) -> str | None:
    if value is None:
        return None
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def money_text(value) -> str | None:
    """An amount of AITBC as the API writes it: eight decimals, never an exponent (``str`` of a zero
    read from a ``numeric(24, 8)`` column is ``0E-8``)."""
    return None if value is None else f"{value:.8f}"
