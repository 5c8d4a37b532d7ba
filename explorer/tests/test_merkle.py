import hashlib

import pytest

from core.crypto import merkle
from explorer import verify
from explorer.tests.independent import proof_leads_to_root, tree_root

# Certificate Transparency's test vectors (RFC 6962 reference implementation).
CT_LEAVES = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43", bytes(range(0x50, 0x58)), bytes(range(0x60, 0x70))]  # fmt: skip
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def hashed(count: int) -> list[bytes]:
    return [merkle.leaf_hash(f"leaf {i}".encode()) for i in range(count)]


def proof_dicts(path) -> list[dict]:
    return [{"position": side, "hash": sibling.hex()} for side, sibling in path]


@pytest.mark.parametrize("size", range(1, len(CT_LEAVES) + 1))
def test_roots_match_the_certificate_transparency_test_vectors(size):
    assert merkle.root([merkle.leaf_hash(data) for data in CT_LEAVES[:size]]).hex() == CT_ROOTS[size - 1]


def test_empty_tree_hash_is_the_hash_of_nothing():
    assert merkle.root([]) == hashlib.sha256(b"").digest()


@pytest.mark.parametrize("size", range(1, 18))
def test_every_leaf_proof_verifies_independently_for_trees_of_1_to_17(size):
    leaves = hashed(size)
    root = merkle.root(leaves)
    assert root == tree_root(leaves)
    for index in range(size):
        siblings = proof_dicts(merkle.inclusion_path(index, leaves))
        assert proof_leads_to_root(leaves[index].hex(), siblings, root.hex())
        assert verify.verify_proof(leaves[index].hex(), siblings, root.hex())


@pytest.mark.parametrize("size", range(2, 18))
def test_proof_fails_when_a_sibling_or_the_leaf_is_altered(size):
    leaves = hashed(size)
    root = merkle.root(leaves).hex()
    for index in range(size):
        siblings = proof_dicts(merkle.inclusion_path(index, leaves))
        other_leaf = leaves[(index + 1) % size].hex()
        assert not proof_leads_to_root(other_leaf, siblings, root)
        assert not verify.verify_proof(other_leaf, siblings, root)
        for altered in range(len(siblings)):
            changed = [dict(s) for s in siblings]
            changed[altered]["hash"] = hashlib.sha256(b"tampered").hexdigest()
            assert not proof_leads_to_root(leaves[index].hex(), changed, root)
            assert not verify.verify_proof(leaves[index].hex(), changed, root)
            swapped = [dict(s) for s in siblings]
            swapped[altered]["position"] = "left" if swapped[altered]["position"] == "right" else "right"
            assert not verify.verify_proof(leaves[index].hex(), swapped, root)


def test_a_single_leaf_is_its_own_root_with_an_empty_proof():
    leaves = hashed(1)
    assert merkle.inclusion_path(0, leaves) == []
    assert merkle.root(leaves) == leaves[0]


def test_leaf_and_node_hashes_are_domain_separated():
    left, right = hashed(2)
    assert merkle.node_hash(left, right) != merkle.leaf_hash(left + right)
    assert merkle.node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()


def test_verify_proof_rejects_malformed_input():
    assert not verify.verify_proof("zz", [], "00")
    assert not verify.verify_proof("00", [{"position": "up", "hash": "00"}], "00")
    assert not verify.verify_proof("00", [{"hash": "00"}], "00")
