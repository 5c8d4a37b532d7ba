"""Offline verification of AITBC receipts and Merkle proofs: the standard library and PyNaCl only.

Written apart from ``core.crypto.signing`` on purpose, so that a second implementation of the
canonical rule checks the first. Usable without Django::

    python -m explorer.verify receipt.json [--public-key KEY] [--opening F] [--payload F] [--result F]

Canonical JSON: ``json.dumps(obj_without_None_values, separators=(",", ":"), sort_keys=True)``
in UTF-8; signatures and attestations cover the document without ``signature`` and
``attestations``.
"""

import argparse
import base64
import binascii
import hashlib
import hmac
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
    # Only the one spelling docs/api.md gives (URL-safe, unpadded, no stray bits): no two texts verify alike.
    if key_id_of(key) != key_text or key_id_of(sig) != sig_text or len(key) != 32:
        return "malformed signature"
    try:
        VerifyKey(key).verify(payload, sig)
    except (BadSignatureError, ValueError, TypeError):
        return "signature does not match"
    return None


COMMITMENT = "hmac-sha256"
# An argument not given: ``None`` is a value a payload or result may hold.
NOT_GIVEN = object()
CONTENTS = (("input", "payload", "input_sha256"), ("output", "result", "output_sha256"))


def check_contents(document: dict, opening=None, *, payload=NOT_GIVEN, result=NOT_GIVEN) -> str | None:
    """Why the receipt does not commit to ``payload`` (its job's input) or ``result`` (its output),
    each checked when given; None when every one given matches.

    A receipt whose metadata names ``commitment`` "hmac-sha256" holds HMAC-SHA256 commitments of
    their canonical JSON under the salts of its ``opening`` (``{"input_salt", "output_salt"}``,
    hex), which its job's client is given; a receipt signed before commitments holds plain SHA-256
    digests, and needs no opening.
    """
    given = {"payload": payload, "result": result}
    metadata = document.get("metadata")
    if not isinstance(metadata, dict):
        return "the receipt has no metadata"
    scheme = metadata.get("commitment")
    if scheme not in (None, COMMITMENT):
        return f"unsupported commitment {scheme!r}"
    for name, argument, field in CONTENTS:
        value = given[argument]
        if value is NOT_GIVEN:
            continue
        stated = metadata.get(field)
        if not isinstance(stated, str):
            return f"the receipt states no {field}"
        if scheme is None:
            computed = hashlib.sha256(canonical(value)).hexdigest()
        else:
            salt = opening.get(f"{name}_salt") if isinstance(opening, dict) else None
            if not isinstance(salt, str):
                return f"the opening has no {name}_salt"
            try:
                key = bytes.fromhex(salt)
            except ValueError:
                return f"the opening's {name}_salt is not hex"
            computed = hmac.new(key, canonical(value), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(computed, stated):
            return f"the {name} does not match the receipt's commitment"
    return None


def verify_receipt(
    document, public_key: str | Iterable[str] | None = None, *, opening=None, payload=NOT_GIVEN, result=NOT_GIVEN
) -> tuple[bool, str | None]:
    """Check a receipt: the coordinator's signature and every attestation, then that it commits
    to ``payload`` and ``result`` where given (``check_contents``, with ``opening``).

    ``public_key`` (hex or base64, or several) names the coordinator keys to trust; without
    it any key that signs correctly is accepted. Returns ``(valid, reason)``.
    """
    valid, reason = verify_signed(document, public_key)
    if not valid:
        return False, reason
    reason = check_contents(document, opening, payload=payload, result=result)
    return (False, reason) if reason else (True, None)


def verify_signed(document, public_key: str | Iterable[str] | None = None) -> tuple[bool, str | None]:
    """Check a signed document's coordinator signature (by a trusted key when ``public_key`` names
    them) and its attestations. Returns ``(valid, reason)``."""
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
    signed = signed_bytes(document)
    reason = check_signature(signed, signature)
    if reason:
        return False, reason
    attestations = document.get("attestations", [])
    if not isinstance(attestations, list):
        return False, "attestations must be a list"
    for index, attestation in enumerate(attestations):
        reason = check_signature(signed, attestation)
        if reason:
            return False, f"attestation {index}: {reason}"
    return True, None


def merkle_root(leaf_hashes: list[str]) -> str:
    """The RFC 6962 tree hash (hex) over leaf hashes (hex), as blocks and execution receipts use it."""
    nodes = [bytes.fromhex(leaf) for leaf in leaf_hashes]
    if not nodes:
        return hashlib.sha256(b"").hexdigest()

    def tree(items: list[bytes]) -> bytes:
        if len(items) == 1:
            return items[0]
        split = 1 << ((len(items) - 1).bit_length() - 1)
        return hashlib.sha256(b"\x01" + tree(items[:split]) + tree(items[split:])).digest()

    return tree(nodes).hex()


def verify_execution_receipt(bundle, public_key: str | Iterable[str] | None = None) -> tuple[bool, str | None]:
    """Check a workflow execution's receipt bundle, ``{"receipt", "step_receipts"}``: the coordinator's
    signature over the execution's receipt, every step receipt, each step's leaf hash and the Merkle
    root over them. Returns ``(valid, reason)``."""
    if not isinstance(bundle, dict) or not isinstance(bundle.get("receipt"), dict):
        return False, "an execution receipt bundle is an object with receipt and step_receipts"
    document, step_receipts = bundle["receipt"], bundle.get("step_receipts")
    valid, reason = verify_signed(document, public_key)
    if not valid:
        return False, f"execution receipt: {reason}"
    steps = document.get("steps")
    if not isinstance(steps, list) or not isinstance(step_receipts, list) or len(steps) != len(step_receipts):
        return False, "the step receipts do not match the execution receipt's steps"
    for step, receipt in zip(steps, step_receipts, strict=True):
        name = step.get("step_id") if isinstance(step, dict) else None
        valid, reason = verify_receipt(receipt, public_key)
        if not valid:
            return False, f"step {name}: {reason}"
        if not isinstance(step, dict) or receipt_leaf_hash(receipt) != step.get("leaf_hash"):
            return False, f"step {name}: its receipt is not the one the execution receipt names"
    try:
        root = merkle_root([step["leaf_hash"] for step in steps])
    except (TypeError, ValueError):
        return False, "unreadable leaf hash"
    if root != document.get("merkle_root"):
        return False, "the Merkle root does not match the steps"
    return True, None


def verify_any(document, public_key=None, **given) -> tuple[bool, str | None]:
    """``verify_execution_receipt`` for an execution's receipt bundle, else ``verify_receipt``."""
    if isinstance(document, dict) and "step_receipts" in document:
        return verify_execution_receipt(document, public_key)
    return verify_receipt(document, public_key, **given)


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


def unpack(value) -> tuple[object, dict]:
    """A receipt from parsed JSON, and what came with it: the receipt itself, or an object carrying
    it as ``receipt`` (a receipt bundle, or a job's result as the API gives it) with any of
    ``opening`` (or ``receipt_opening``), ``payload`` and ``result``. The second item holds those
    given, as ``verify_receipt``'s keyword arguments."""
    if not (isinstance(value, dict) and "signature" not in value and isinstance(value.get("receipt"), dict)):
        return value, {}
    if "step_receipts" in value:  # a workflow execution's receipt bundle: checked whole
        return value, {}
    given = {name: value[name] for name in ("payload", "result") if name in value}
    opening = value.get("opening", value.get("receipt_opening"))
    if opening is not None:
        given["opening"] = opening
    return value["receipt"], given


def read_json(path: str):
    """JSON from a file ('-': standard input)."""
    if path == "-":
        return json.loads(sys.stdin.read())
    with open(path, encoding="utf-8") as handle:
        return json.loads(handle.read())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", help="the receipt's JSON, or a bundle carrying it as receipt ('-' reads standard input)"
    )
    parser.add_argument("--public-key", action="append", help="the coordinator's public key (hex or base64)")
    parser.add_argument("--opening", help="JSON file of the receipt's opening: {input_salt, output_salt}")
    parser.add_argument("--payload", help="JSON file of the job's payload, checked against the receipt's input")
    parser.add_argument("--result", help="JSON file of the job's result, checked against the receipt's output")


def load(file: str, *, opening: str | None = None, payload: str | None = None, result: str | None = None):
    """The receipt in ``file`` and what to check it against: the files named here (paths) over what
    a bundle carries. Raises OSError, UnicodeDecodeError or ValueError."""
    document, given = unpack(read_json(file))
    named = {"opening": opening, "payload": payload, "result": result}
    given.update({name: read_json(path) for name, path in named.items() if path})
    return document, given


def matched(given: dict) -> str | None:
    """What a valid receipt was also checked against, in words."""
    checked = [name for name, argument, _ in CONTENTS if argument in given]
    return f"the {' and '.join(checked)} match the receipt" if checked else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify an AITBC receipt offline.")
    add_arguments(parser)
    options = parser.parse_args(argv)
    try:
        document, given = load(options.file, opening=options.opening, payload=options.payload, result=options.result)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        print(f"unreadable receipt: {error}", file=sys.stderr)
        return 2
    valid, reason = verify_any(document, options.public_key, **given)
    also = matched(given)
    print(("valid" + (f": {also}" if also else "")) if valid else f"invalid: {reason}")
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
