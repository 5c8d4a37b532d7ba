"""Ed25519 receipts over canonical JSON, as docs/api.md (Receipts) specifies.

Canonical JSON is ``json.dumps(obj_without_None_values, separators=(",", ":"),
sort_keys=True)`` in UTF-8. The signature covers the payload without its ``signature`` and
``attestations`` fields. Kept free of Django imports except for loading the key, so the
verifier can run anywhere.
"""

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import threading
from decimal import Decimal
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

ALGORITHM = "Ed25519"
UNSIGNED_FIELDS = ("signature", "attestations")


def _without_none(value):
    # Scalars are kept without a call each: every receipt runs this over a job's payload and result.
    if isinstance(value, dict):
        return {k: _without_none(v) if isinstance(v, (dict, list)) else v for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) if isinstance(v, (dict, list)) else v for v in value]
    return value


_CANONICAL = json.JSONEncoder(separators=(",", ":"), sort_keys=True)


def _dumps(obj) -> bytes:
    return _CANONICAL.encode(obj).encode()


def canonical_json(obj) -> bytes:
    return _dumps(_without_none(obj))


def decimal_text(value) -> str | None:
    """A Decimal as canonical JSON can carry it: a plain string, no exponent, no trailing zeros."""
    if value is None:
        return None
    text = format(Decimal(value).normalize(), "f")
    return "0" if text == "-0" else text


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _any_b64decode(text: str) -> bytes:
    """Base64 in either alphabet, padded or not (binascii.Error if it is not base64)."""
    padded = text + "=" * (-len(text) % 4)
    return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)


def b64url_canonical(text: str) -> str:
    """The unpadded URL-safe spelling of base64 ``text`` given in any spelling (ValueError if it is not base64)."""
    try:
        return b64url(_any_b64decode(text))
    except binascii.Error:
        raise ValueError("not base64") from None


def public_key_id(text: str) -> str:
    """The key id of a 32-byte Ed25519 public key written as hex or base64 (URL-safe or standard,
    padded or not); ValueError if ``text`` is none of these."""
    text = text.strip()
    try:
        raw = bytes.fromhex(text) if len(text) == 64 else _any_b64decode(text)
    except (ValueError, binascii.Error):
        raise ValueError("not hex or base64") from None
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, got {len(raw)}")
    return b64url(raw)


def signs(payload: bytes, *, key_id: str, sig: str) -> bool:
    """Whether ``sig`` is the Ed25519 signature of ``payload`` by the key ``key_id`` (both unpadded
    URL-safe base64)."""
    try:
        VerifyKey(b64url_decode(key_id)).verify(payload, b64url_decode(sig))
    except (BadSignatureError, ValueError, TypeError, binascii.Error):
        return False
    return True


# How a receipt commits to its job's input and output: HMAC-SHA256 of the canonical JSON under a
# random salt of the receipt's own (named in the receipt's metadata as ``commitment``). Without the
# salt, no guess of the input or output can be checked against the receipt.
COMMITMENT = "hmac-sha256"
SALT_BYTES = 32


def new_salt() -> str:
    return secrets.token_hex(SALT_BYTES)


def commitment(salt: str, value) -> str:
    """The hex commitment to ``value`` under ``salt`` (hex)."""
    return hmac.new(bytes.fromhex(salt), canonical_json(value), hashlib.sha256).hexdigest()


def key_id(verify_key: VerifyKey) -> str:
    return b64url(bytes(verify_key))


def signed_payload(document: dict) -> bytes:
    return canonical_json({k: v for k, v in document.items() if k not in UNSIGNED_FIELDS})


def sign(payload: dict, signing_key: SigningKey) -> dict:
    """Return ``payload`` with its ``signature`` block added."""
    return signed_document(payload, signing_key)[0]


def signed_document(payload: dict, signing_key: SigningKey) -> tuple[dict, bytes]:
    """``sign(payload)`` and its canonical JSON, with ``payload`` walked once."""
    document = _without_none(payload)
    # ``document`` holds no None any more: its canonical forms are plain sorted dumps.
    signature = signing_key.sign(_dumps({k: v for k, v in document.items() if k not in UNSIGNED_FIELDS})).signature
    document["signature"] = {"alg": ALGORITHM, "key_id": key_id(signing_key.verify_key), "sig": b64url(signature)}
    return document, _dumps(document)


def verify(document: dict, *, trusted_key_ids: set[str] | None = None) -> tuple[bool, str | None]:
    """Check a receipt's signature. Returns ``(valid, reason)``; ``reason`` is None when valid."""
    signature = document.get("signature")
    if not isinstance(signature, dict):
        return False, "missing signature"
    if signature.get("alg") != ALGORITHM:
        return False, f"unsupported algorithm {signature.get('alg')!r}"
    key_text, sig_text = signature.get("key_id"), signature.get("sig")
    if not isinstance(key_text, str) or not isinstance(sig_text, str):
        return False, "malformed signature"
    if trusted_key_ids is not None and key_text not in trusted_key_ids:
        return False, "signed by an unknown key"
    try:
        key, sig = b64url_decode(key_text), b64url_decode(sig_text)
    except (ValueError, TypeError):
        return False, "malformed signature"
    if b64url(key) != key_text or b64url(sig) != sig_text:
        return False, "malformed signature"  # one spelling only: unpadded URL-safe base64
    try:
        VerifyKey(key).verify(signed_payload(document), sig)
    except (BadSignatureError, ValueError, TypeError):
        return False, "signature does not match"
    return True, None


_key_lock = threading.Lock()
_signing_key: SigningKey | None = None


def coordinator_signing_key() -> SigningKey:
    """The coordinator's key: ``RECEIPT_SIGNING_KEY_HEX``, else one generated once under the data dir."""
    global _signing_key
    with _key_lock:
        if _signing_key is None:
            _signing_key = _load_or_create_key()
        return _signing_key


def _load_or_create_key() -> SigningKey:
    from django.conf import settings

    if settings.RECEIPT_SIGNING_KEY_HEX:
        return SigningKey(bytes.fromhex(settings.RECEIPT_SIGNING_KEY_HEX))
    path = Path(settings.DATA_DIR) / "receipt_signing_key.hex"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return SigningKey(bytes.fromhex(path.read_text().strip()))
    key = SigningKey.generate()
    with os.fdopen(fd, "w") as handle:
        handle.write(bytes(key).hex())
    return key


def coordinator_key_id() -> str:
    return key_id(coordinator_signing_key().verify_key)


def trusted_key_ids() -> set[str]:
    """Keys whose receipts and blocks we vouch for: the current one and earlier ones still trusted."""
    from django.conf import settings

    return {coordinator_key_id(), *settings.RECEIPT_TRUSTED_KEY_IDS}


def sign_bytes(data: bytes) -> str:
    """The coordinator's signature of ``data``, URL-safe base64 without padding."""
    return b64url(coordinator_signing_key().sign(data).signature)
