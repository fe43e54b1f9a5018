import socket

import pytest


def free_udp_port() -> int:
    """A UDP port on loopback that nobody holds right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def udp_port():
    return free_udp_port
