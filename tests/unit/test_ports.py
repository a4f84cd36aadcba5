"""testbed.ports: servers started back to back never get the same port."""
from testbed.ports import free_port


def test_free_port_never_hands_out_a_port_twice():
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)
