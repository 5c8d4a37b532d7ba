"""The helpers that start a deployment's processes for the tests and benchmarks."""

from aitbc_site.testing.processes import free_port


def test_free_port_never_hands_out_one_port_twice():
    # The kernel offers a closed socket's port again: without the record, 500 calls repeat some.
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)
