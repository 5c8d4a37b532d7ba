"""Wallet addresses: BIP-173 bech32 (not bech32m), human-readable part ``ait``, over the first
20 bytes of sha256 of the wallet's Ed25519 public key. One rule for login, ledger and explorer."""

import hashlib

import bech32

HRP = "ait"
ADDRESS_BYTES = 20


def wallet_address(public_key: bytes) -> str:
    """The address of a 32-byte Ed25519 public key."""
    if len(public_key) != 32:
        raise ValueError("An Ed25519 public key is 32 bytes.")
    digest = hashlib.sha256(public_key).digest()[:ADDRESS_BYTES]
    return bech32.bech32_encode(HRP, bech32.convertbits(digest, 8, 5))


def is_wallet_address(address: str) -> bool:
    """A well-formed ``ait1…`` bech32 address (checksum included)."""
    if not isinstance(address, str) or (address.lower() != address and address.upper() != address):
        return False
    hrp, data = bech32.bech32_decode(address)
    if hrp != HRP or data is None:
        return False
    decoded = bech32.convertbits(data, 5, 8, False)
    return decoded is not None and len(decoded) == ADDRESS_BYTES
