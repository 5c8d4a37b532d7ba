"""Bitcoin deposit addresses for the exchange, derived from a watch-only extended public key.

The platform never holds a Bitcoin private key: ``EXCHANGE_XPUB`` is the account-level public key
of a wallet kept elsewhere (a BIP-84 ``vpub``/``zpub``, or a plain ``tpub``/``xpub`` of the same
account). Request ``n`` gets the native SegWit (P2WPKH) address at ``m/0/n`` below it: the wallet's
external chain, so the owner's wallet software sees the deposits. Derivation is done by ``embit``.
"""

from functools import lru_cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from embit import bip32, script
from embit.base import EmbitError
from embit.networks import NETWORKS

# Our setting's spelling → embit's network. Signet and regtest share testnet's key versions.
NETWORK_NAMES = {"mainnet": "main", "testnet": "test", "signet": "signet", "regtest": "regtest"}
# Version prefixes of keys we derive single-key P2WPKH from: xpub/tpub (BIP-32) and zpub/vpub (BIP-84).
PUBLIC_VERSIONS = ("xpub", "zpub")
EXTERNAL_CHAIN = 0
MAX_INDEX = bip32.HARDENED_INDEX - 1


def _network(name: str) -> dict:
    if name not in NETWORK_NAMES:
        raise ImproperlyConfigured(f"EXCHANGE_NETWORK must be one of {', '.join(NETWORK_NAMES)}, got {name!r}")
    return NETWORKS[NETWORK_NAMES[name]]


@lru_cache(maxsize=4)
def account_key(xpub: str, network_name: str) -> bip32.HDKey:
    """The parsed extended public key, refused unless it is public and for ``network_name``."""
    network = _network(network_name)
    try:
        key = bip32.HDKey.from_base58(xpub)
    except (EmbitError, ValueError) as error:
        raise ImproperlyConfigured(f"EXCHANGE_XPUB is not an extended public key: {error}") from None
    if key.is_private:
        raise ImproperlyConfigured("EXCHANGE_XPUB is a private key: configure the account's public key only")
    if key.version not in {network[version] for version in PUBLIC_VERSIONS}:
        raise ImproperlyConfigured(
            f"EXCHANGE_XPUB is not an xpub/zpub (tpub/vpub on test networks) for EXCHANGE_NETWORK={network_name}"
        )
    return key


def deposit_address(index: int) -> str:
    """The P2WPKH address at ``m/0/<index>`` of the configured key (``tb1…`` on testnet, ``bc1…`` on mainnet)."""
    if not 0 <= index <= MAX_INDEX:
        raise ValueError(f"derivation index out of range: {index}")
    key = account_key(settings.EXCHANGE_XPUB, settings.EXCHANGE_NETWORK)
    child = key.derive([EXTERNAL_CHAIN, index])
    return script.p2wpkh(child.key).address(_network(settings.EXCHANGE_NETWORK))


def derivation_path(index: int) -> str:
    return f"m/{EXTERNAL_CHAIN}/{index}"
