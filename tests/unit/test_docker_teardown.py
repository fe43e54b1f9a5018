"""Removing a run's networks when the engine still lists endpoints of
containers it has just removed ("has active endpoints", seen under load on
a 20-container run): retried, stale endpoints force-disconnected, and the
engine's error raised only after the timeout."""
from __future__ import annotations

import pytest

docker = pytest.importorskip("docker")

from testbed.emulate.backends.docker import remove_networks  # noqa: E402


class StaleEndpointAPI:
    """A network that keeps one endpoint until it is force-disconnected
    (or, with ``sticky``, forever)."""

    def __init__(self, sticky: bool = False) -> None:
        self.nets = [{"Id": "n1", "Name": "ttnet-abcdef", "Labels": {"ttnet.run": "abcdef"}},
                     {"Id": "n9", "Name": "other", "Labels": {"ttnet.run": "ffffff"}}]
        self.endpoints = {"n1": {"c-gone": {}}}
        self.sticky = sticky
        self.calls: list[tuple] = []

    def networks(self, filters=None):
        want = filters["label"].split("=", 1)[1]
        return [n for n in self.nets if n["Labels"]["ttnet.run"] == want]

    def inspect_network(self, nid):
        return {"Containers": dict(self.endpoints.get(nid, {}))}

    def disconnect_container_from_network(self, container, net_id, force=False):
        self.calls.append(("disconnect", container, net_id, force))
        if not self.sticky:
            self.endpoints[net_id].pop(container, None)

    def remove_network(self, nid):
        self.calls.append(("remove", nid))
        if self.endpoints.get(nid):
            raise docker.errors.APIError(f"error while removing network: network {nid} "
                                         "has active endpoints")
        self.nets = [n for n in self.nets if n["Id"] != nid]


class Client:
    def __init__(self, api):
        self.api = api


def test_stale_endpoints_are_disconnected_and_the_network_removed():
    api = StaleEndpointAPI()
    removed = remove_networks(Client(api), {"label": "ttnet.run=abcdef"}, timeout_s=10)
    assert removed == ["network ttnet-abcdef"]
    assert ("disconnect", "c-gone", "n1", True) in api.calls
    assert [n["Id"] for n in api.nets] == ["n9"]          # another run's network stays


def test_an_endpoint_that_never_goes_raises_after_the_timeout():
    api = StaleEndpointAPI(sticky=True)
    with pytest.raises(docker.errors.APIError, match="active endpoints"):
        remove_networks(Client(api), {"label": "ttnet.run=abcdef"}, timeout_s=1.0)
    assert sum(1 for c in api.calls if c[0] == "remove") >= 3
