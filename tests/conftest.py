import os
import socket

import pytest
from hypothesis import settings

# Property tests are deterministic in `make test`: the same examples every
# run (derandomize), no example database carried between runs, and no
# per-example deadline (a loaded 2-core CI machine once took over 200 ms on
# one YAML round trip, and a timing flake is not a property failure).
# HYPOTHESIS_PROFILE=explore draws fresh random examples when hunting bugs.
settings.register_profile("ttnet", deadline=None, derandomize=True, database=None)
settings.register_profile("explore", deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ttnet"))


def free_udp_port() -> int:
    """A UDP port on loopback that nobody holds right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def udp_port():
    return free_udp_port


def pytest_collection_modifyitems(session, config, items):
    """Run the swarm e2e tests last: they initialise a one-node swarm and
    leave it again, which changes the Docker engine's network state (the
    ingress overlay, docker_gwbridge); every other test runs on an engine
    that has not been through that in this session."""
    last = [item for item in items if item.fspath.basename == "test_swarm_e2e.py"]
    if last:
        items[:] = [item for item in items if item not in last] + last
