"""The rules of docs/api.md (Receipts) written out again, apart from the code under test, to check it."""

import base64
import hashlib
import json


def canonical(obj) -> bytes:
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return json.dumps(strip(obj), separators=(",", ":"), sort_keys=True).encode("utf-8")


def unpadded_b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def unpadded_b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def payload_of(document: dict) -> bytes:
    return canonical({k: v for k, v in document.items() if k not in ("signature", "attestations")})


def leaf(data: bytes) -> str:
    return hashlib.sha256(b"\x00" + data).hexdigest()


def tree_root(leaf_hashes: list[bytes]) -> bytes:
    """RFC 6962 MTH, written as the RFC states it."""
    if not leaf_hashes:
        return hashlib.sha256(b"").digest()
    if len(leaf_hashes) == 1:
        return leaf_hashes[0]
    k = 1
    while k * 2 < len(leaf_hashes):
        k *= 2
    return hashlib.sha256(b"\x01" + tree_root(leaf_hashes[:k]) + tree_root(leaf_hashes[k:])).digest()


def proof_leads_to_root(leaf_hash: str, siblings: list[dict], merkle_root: str) -> bool:
    current = bytes.fromhex(leaf_hash)
    for sibling in siblings:
        other = bytes.fromhex(sibling["hash"])
        if sibling["position"] == "left":
            current = hashlib.sha256(b"\x01" + other + current).digest()
        else:
            assert sibling["position"] == "right"
            current = hashlib.sha256(b"\x01" + current + other).digest()
    return current.hex() == merkle_root
