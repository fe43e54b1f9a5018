"""Host backends: make one host per ensemble on a fresh bridge, run a command in each.

Owns the choice between backends (``make_backend``) and the sweep of
leftovers from earlier runs (``cleanup_stale``). Never applies impairments.
"""
from __future__ import annotations

import logging

from testbed.emulate.backends.base import Backend, BackendError, Host

log = logging.getLogger(__name__)

__all__ = ["Backend", "BackendError", "Host", "make_backend", "cleanup_stale",
           "present_resources"]

NAMES = ("docker", "netns", "swarm")


def backend_name(name: str | None = None) -> str:
    """The backend ``make_backend(name)`` would make, without making it."""
    if name in (None, "auto"):
        from testbed.emulate.backends.docker import client_or_none
        return "docker" if client_or_none() is not None else "netns"
    return name


def make_backend(name: str | None = None, **kwargs) -> Backend:
    """A backend by name; None/"auto" means docker if its engine answers, else netns.

    kwargs go to the backend's constructor (e.g. image=, repo_root=).
    """
    if name in (None, "auto"):
        from testbed.emulate.backends.docker import client_or_none
        client = client_or_none()
        name = "docker" if client is not None else "netns"
        if client is not None:
            kwargs.setdefault("client", client)
        log.info("backend auto: %s", name)
    if name == "docker":
        from testbed.emulate.backends.docker import DockerBackend
        return DockerBackend(**kwargs)
    if name == "netns":
        from testbed.emulate.backends.netns import NetnsBackend
        return NetnsBackend(**kwargs)
    if name == "swarm":
        from testbed.emulate.backends.swarm import SwarmBackend
        return SwarmBackend(**kwargs)
    raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(NAMES)} or 'auto'")


def present_resources() -> list[str]:
    """Every ttnet resource on this host (containers, networks, namespaces,
    links, FORWARD rules, run claims), each marked with its run and whether
    that run's owning process is alive (``live``) or gone (``stale``: what
    ``down`` removes). Reads only."""
    from testbed.emulate import net
    from testbed.emulate.backends import docker as docker_backend
    from testbed.emulate.backends import netns as netns_backend
    from testbed.emulate.backends import swarm as swarm_backend
    live = {c.run_id for c in net.claims() if c.owner_alive}
    found = swarm_backend.resources_present() + docker_backend.resources() \
        + netns_backend.resources()
    found += [(c.run_id, f"run claim {c.run_id} ({c.backend})") for c in net.claims()]
    return [f"{what} [run {rid}, {'live' if rid in live else 'stale'}]"
            for rid, what in sorted(found)]


def cleanup_stale() -> list[str]:
    """Remove leftovers of runs whose owning process is gone; return what was removed.

    Runs of live processes (their claim in /run/ttnet/runs) are left alone.
    """
    from testbed.emulate.backends import docker as docker_backend
    from testbed.emulate.backends import netns as netns_backend
    from testbed.emulate.backends import swarm as swarm_backend
    # Swarm first: its services own task containers the docker sweep would see.
    removed = swarm_backend.cleanup_stale()
    removed += docker_backend.cleanup_stale() + netns_backend.cleanup_stale()
    for item in removed:
        log.info("removed stale %s", item)
    return removed
