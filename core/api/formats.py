"""How the API writes values that JSON has no type for."""


def iso_datetime(value) -> str | None:
    if value is None:
        return None
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text
