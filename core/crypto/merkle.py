"""Merkle trees as RFC 6962 (Certificate Transparency) defines them.

leaf = SHA-256(0x00 ‖ data), node = SHA-256(0x01 ‖ left ‖ right); a tree of n > 1 leaves
splits at k, the largest power of two smaller than n. The empty tree's hash is SHA-256("").
"""

import hashlib

LEFT = "left"
RIGHT = "right"


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves: list[bytes]) -> bytes:
    """The Merkle tree hash of ``leaves`` (already leaf-hashed)."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = _split(n)
    return node_hash(root(leaves[:k]), root(leaves[k:]))


def inclusion_path(index: int, leaves: list[bytes]) -> list[tuple[str, bytes]]:
    """The audit path of ``leaves[index]``, from the leaf upwards: ``(side of the sibling, sibling hash)``."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} is not in a tree of {len(leaves)}")
    path: list[tuple[str, bytes]] = []
    lo, hi = 0, len(leaves)
    # Walk down from the root, remembering each level's sibling subtree, then reverse.
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append((RIGHT, root(leaves[lo + k : hi])))
            hi = lo + k
        else:
            path.append((LEFT, root(leaves[lo : lo + k])))
            lo += k
    path.reverse()
    return path


def root_from_path(leaf: bytes, path: list[tuple[str, bytes]]) -> bytes:
    current = leaf
    for side, sibling in path:
        current = node_hash(sibling, current) if side == LEFT else node_hash(current, sibling)
    return current
