from functools import partial

from accounts.api.authentication import ApiKeyAuthentication, raw_key_from_headers
from accounts.services import api_key_active, api_key_touch, credentials, hash_key, key_prefix
from miners import selectors


class MinerKeyAuthentication(ApiKeyAuthentication):
    """``ApiKeyAuthentication`` that also reads the miner named by ``X-Miner-ID`` in the same
    statement, for the view to check (``MinerView.miner``): a miner's poll or result is then one
    query short, and none while both are kept in ``accounts.services.credentials``. Requests naming
    no miner there authenticate as usual."""

    def authenticate(self, request):
        raw_key, miner_id = raw_key_from_headers(request.headers), request.headers.get("X-Miner-ID")
        if raw_key is None or not miner_id or not selectors.is_miner_name(miner_id):
            return super().authenticate(request)
        read = partial(_key_and_miner, raw_key=raw_key, miner_id=miner_id)
        api_key, miner = credentials.read(("miner", hash_key(raw_key), miner_id), read) or (None, None)
        if api_key is not None:
            api_key_touch(api_key=api_key)
            if miner is not selectors.NOT_LOOKED_UP:
                request.named_miner = (miner_id, miner)
        return self.authenticated(api_key)


def _key_and_miner(*, raw_key: str, miner_id: str) -> tuple | None:
    """``(api_key, miner)``: the active key and the miner named ``miner_id`` (None when there is
    none); None when the key is not valid."""
    keys, miner = selectors.keys_and_miner(key_prefix=key_prefix(raw_key), miner_id=miner_id)
    api_key = api_key_active(raw_key=raw_key, candidates=keys)
    if api_key is None:
        return None
    # The miner came joined to the key rows: with none (a key from the environment, used for the
    # first time), it was not looked up at all.
    return api_key, miner if keys else selectors.NOT_LOOKED_UP
