"""How a job's payload carries its generation parameters: under "params" or (older clients) at
the payload's top level, "params" winning. The submit path (pricing, catalog limits) and the
engine read them the same way through this one function; it needs neither torch nor Django."""

PARAM_NAMES = ("max_tokens", "temperature", "top_p", "stop", "seed")


def generation_params(payload: dict) -> dict:
    """The parameters given (a null counts as not given); ``ValueError`` if "params" is no object."""
    nested = payload.get("params") or {}
    if not isinstance(nested, dict):
        raise ValueError("params must be a JSON object")
    merged = {name: payload[name] for name in PARAM_NAMES if name in payload} | nested
    return {name: value for name, value in merged.items() if value is not None}
