from accounts.api.authentication import ApiKeyAuthentication, raw_key_from_headers
from accounts.services import key_prefix
from miners import selectors


class MinerKeyAuthentication(ApiKeyAuthentication):
    """``ApiKeyAuthentication`` that also reads the miner named by ``X-Miner-ID`` in the same
    statement, for the view to check (``MinerView.miner``): a miner's poll or result is then one
    query short. Requests naming no miner there authenticate as usual."""

    def authenticate(self, request):
        raw_key, miner_id = raw_key_from_headers(request.headers), request.headers.get("X-Miner-ID")
        if raw_key is None or not miner_id or not selectors.is_miner_name(miner_id):
            return super().authenticate(request)
        keys, miner = selectors.keys_and_miner(key_prefix=key_prefix(raw_key), miner_id=miner_id)
        authenticated = self.authenticate_key(raw_key, candidates=keys)
        if keys:
            # The miner came joined to the key rows: with none (a key from the environment, used
            # for the first time), it was not looked up at all.
            request.named_miner = (miner_id, miner)
        return authenticated
