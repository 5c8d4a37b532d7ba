"""Offline verification of AITBC receipts and Merkle proofs: the standard library and PyNaCl only.

Written apart from ``explorer.signing`` on purpose, so that a second implementation of the
canonical rule checks the first. Usable without Django::

    python -m explorer.verify receipt.json [--public-key KEY]

Canonical JSON: ``json.dumps(obj_without_None_values, separators=(",", ":"), sort_keys=True)``
in UTF-8; signatures and attestations cover the document without ``signature`` and
``attestations``.
"""

import argparse
import base64
import binascii
import hashlib
import json
import sys
from collections.abc import Iterable

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

ALGORITHM = "Ed25519"
_UNSIGNED = frozenset({"signature", "attestations"})


def _drop_none(value):
    if isinstance(value, dict):
        return {key: _drop_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_drop_none(item) for item in value]
    return value


def canonical(value) -> bytes:
    return json.dumps(_drop_none(value), separators=(",", ":"), sort_keys=True).encode("utf-8")


def _b64decode(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)


def decode_public_key(text: str) -> bytes:
    """A 32-byte Ed25519 public key written as hex or (URL-safe or standard) base64, padded or not."""
    text = text.strip()
    try:
        raw = bytes.fromhex(text) if len(text) == 64 else _b64decode(text)
    except (ValueError, binascii.Error):
        raise ValueError("not hex or base64") from None
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, got {len(raw)}")
    return raw


def key_id_of(public_key: bytes) -> str:
    return base64.urlsafe_b64encode(public_key).rstrip(b"=").decode("ascii")


def canonical_b64(text: str) -> str:
    """The unpadded URL-safe spelling of base64 ``text`` given in any spelling (ValueError if it is not base64)."""
    try:
        return key_id_of(_b64decode(text))
    except binascii.Error:
        raise ValueError("not base64") from None


def signed_bytes(document: dict) -> bytes:
    return canonical({key: value for key, value in document.items() if key not in _UNSIGNED})


def check_signature(payload: bytes, signature) -> str | None:
    """Why ``signature`` (``{"alg", "key_id", "sig"}``) does not sign ``payload``; None when it does."""
    if not isinstance(signature, dict):
        return "missing signature"
    if signature.get("alg") != ALGORITHM:
        return f"unsupported algorithm {signature.get('alg')!r}"
    key_text, sig_text = signature.get("key_id"), signature.get("sig")
    if not isinstance(key_text, str) or not isinstance(sig_text, str):
        return "malformed signature"
    try:
        key, sig = _b64decode(key_text), _b64decode(sig_text)
    except (ValueError, binascii.Error):
        return "malformed signature"
    # Only the one spelling API.md gives (URL-safe, unpadded, no stray bits): no two texts verify alike.
    if key_id_of(key) != key_text or key_id_of(sig) != sig_text or len(key) != 32:
        return "malformed signature"
    try:
        VerifyKey(key).verify(payload, sig)
    except (BadSignatureError, ValueError, TypeError):
        return "signature does not match"
    return None


def verify_receipt(document, public_key: str | Iterable[str] | None = None) -> tuple[bool, str | None]:
    """Check a receipt: the coordinator's signature and every attestation.

    ``public_key`` (hex or base64, or several) names the coordinator keys to trust; without
    it any key that signs correctly is accepted. Returns ``(valid, reason)``.
    """
    if not isinstance(document, dict):
        return False, "a receipt is a JSON object"
    signature = document.get("signature")
    if public_key is not None:
        keys = [public_key] if isinstance(public_key, str) else list(public_key)
        try:
            trusted = {key_id_of(decode_public_key(key)) for key in keys}
        except ValueError as error:
            return False, f"unusable public key: {error}"
        key_text = signature.get("key_id") if isinstance(signature, dict) else None
        if isinstance(key_text, str) and key_text not in trusted:
            return False, "signed by an unknown key"
    payload = signed_bytes(document)
    reason = check_signature(payload, signature)
    if reason:
        return False, reason
    attestations = document.get("attestations", [])
    if not isinstance(attestations, list):
        return False, "attestations must be a list"
    for index, attestation in enumerate(attestations):
        reason = check_signature(payload, attestation)
        if reason:
            return False, f"attestation {index}: {reason}"
    return True, None


def receipt_leaf_hash(document: dict) -> str:
    """The receipt's Merkle leaf (hex): the signed document as issued, attestations given later left out."""
    issued = {key: value for key, value in document.items() if key != "attestations"}
    return hashlib.sha256(b"\x00" + canonical(issued)).hexdigest()


def verify_proof(leaf_hash: str, siblings: list[dict], merkle_root: str) -> bool:
    """Whether ``siblings`` (``[{"position": "left"|"right", "hash"}]``, leaf upwards) lead to ``merkle_root``."""
    try:
        current = bytes.fromhex(leaf_hash)
        for sibling in siblings:
            other = bytes.fromhex(sibling["hash"])
            if sibling["position"] == "left":
                current = hashlib.sha256(b"\x01" + other + current).digest()
            elif sibling["position"] == "right":
                current = hashlib.sha256(b"\x01" + current + other).digest()
            else:
                return False
        return current == bytes.fromhex(merkle_root)
    except (KeyError, TypeError, ValueError):
        return False


def load_document(text: str) -> dict:
    """A receipt from JSON text: the document itself, or a response that carries it as ``receipt``."""
    document = json.loads(text)
    if isinstance(document, dict) and "signature" not in document and isinstance(document.get("receipt"), dict):
        return document["receipt"]
    return document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify an AITBC receipt offline.")
    parser.add_argument("file", help="the receipt's JSON ('-' reads standard input)")
    parser.add_argument("--public-key", action="append", help="the coordinator's public key (hex or base64)")
    options = parser.parse_args(argv)
    try:
        if options.file == "-":
            text = sys.stdin.read()
        else:
            with open(options.file, encoding="utf-8") as handle:
                text = handle.read()
        document = load_document(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        print(f"unreadable receipt: {error}", file=sys.stderr)
        return 2
    valid, reason = verify_receipt(document, options.public_key)
    print("valid" if valid else f"invalid: {reason}")
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
