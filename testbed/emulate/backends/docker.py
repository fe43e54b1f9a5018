"""Backend: one docker container per ensemble on a per-run bridge network.

Owns, per run id ``rid``: the network ``ttnet-<rid>`` (bridge device
``ttdk<rid>``, an explicit free /24 from ``testbed.emulate.net``) and containers
``ttnet-<rid>-<ensemble>`` (plus ``ttnet-<rid>-<ensemble>-net``, the
keeper of the network namespace of an ensemble the fault timeline
restarts), all labelled ``ttnet.run=<rid>``. Containers
are not auto-removed so exit codes and logs stay readable until down().
The run directory is bind-mounted at ``/results``.

Must never: pull images, touch containers or networks without its label, or
leave any of them behind after down() or a failed up().
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import docker.errors

from testbed.emulate import net
from testbed.emulate.backends.base import CTL_DIR, Backend, BackendError, CommandFn, Host, gated
from testbed.spec.model import Topology

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
LABEL = "ttnet.run"
RESULTS_MOUNT = "/results"
#: Where a topology's directory is mounted read-only (``share_dir``).
SHARED_MOUNT = "/topology"
# Parallel create/start calls: enough to hide dockerd's per-call latency on
# 2 cores, below docker-py's connection pool size (10).
WORKERS = 8
STOP_GRACE_S = 2  # SIGTERM first so agents can flush their event logs


def client_or_none(timeout: int = 5):
    """A docker client if the engine answers, else None."""
    try:
        c = docker.from_env(timeout=timeout)
        c.ping()
        return c
    except Exception as e:
        log.debug("docker engine not available: %s", e)
        return None


def teardown_run(client, rid: str) -> list[str]:
    """Remove every container and network labelled with run rid."""
    removed: list[str] = []
    flt = {"label": f"{LABEL}={rid}"}
    with ThreadPoolExecutor(WORKERS) as pool:
        def rm(c: dict) -> str | None:
            try:
                client.api.remove_container(c["Id"], force=True)
                return f"container {c['Names'][0].lstrip('/')}"
            except docker.errors.NotFound:
                return None
        removed += [r for r in pool.map(rm, client.api.containers(all=True, filters=flt)) if r]
    removed += remove_networks(client, flt)
    net.release_run(rid)
    return removed


#: How long teardown keeps trying to remove a network whose endpoints the
#: engine has not released yet.
NETWORK_REMOVE_S = 30.0


def remove_networks(client, flt: dict, timeout_s: float = NETWORK_REMOVE_S) -> list[str]:
    """Remove the networks matching ``flt`` once their containers are gone.
    The engine can still list an endpoint of a container it has just
    removed ("has active endpoints", more often under load); then retry,
    and from the second try on force-disconnect whatever it still lists,
    until ``timeout_s``. Raises the engine's error after that."""
    removed: list[str] = []
    deadline = time.monotonic() + timeout_s
    for n in client.api.networks(filters=flt):
        tries = 0
        while True:
            try:
                client.api.remove_network(n["Id"])
                removed.append(f"network {n['Name']}")
                break
            except docker.errors.NotFound:
                break
            except docker.errors.APIError as exc:
                tries += 1
                if time.monotonic() > deadline:
                    raise
                log.info("network %s not removed yet (%s); retrying", n["Name"], exc)
                if tries >= 2:
                    _disconnect_all(client, n["Id"])
                time.sleep(0.3)
    return removed


def _disconnect_all(client, network_id: str) -> None:
    try:
        endpoints = client.api.inspect_network(network_id).get("Containers") or {}
    except docker.errors.APIError:
        return
    for endpoint in endpoints:
        try:
            client.api.disconnect_container_from_network(endpoint, network_id, force=True)
        except docker.errors.APIError:
            pass


def resources(client=None) -> list[tuple[str, str]]:
    """(run id, description) of every ttnet container and network, live
    runs' included; nothing when the Docker engine does not answer. Reads only."""
    client = client or client_or_none()
    if client is None:
        return []
    flt = {"label": LABEL}
    found = [(c["Labels"][LABEL], f"docker container {c['Names'][0].lstrip('/')} ({c['State']})")
             for c in client.api.containers(all=True, filters=flt)]
    found += [(n["Labels"][LABEL], f"docker network {n['Name']}")
              for n in client.api.networks(filters=flt)]
    return found


def cleanup_stale(client=None) -> list[str]:
    """Remove docker leftovers of runs whose owner process is gone."""
    client = client or client_or_none()
    if client is None:
        return []
    rids = {c["Labels"][LABEL] for c in client.api.containers(all=True, filters={"label": LABEL})}
    rids |= {n["Labels"][LABEL] for n in client.api.networks(filters={"label": LABEL})}
    rids |= {c.run_id for c in net.claims() if c.backend == "docker"}
    live = {c.run_id for c in net.claims() if c.owner_alive}
    removed: list[str] = []
    for rid in sorted(rids - live):
        removed += teardown_run(client, rid)
    return removed


def host_limits(settings, name: str = "?") -> dict:
    """create_host_config arguments for an ensemble's ``cpus:``/``memory:``
    (EnsembleSettings): nano_cpus (as ``docker run --cpus``; above this
    machine's cores, lowered to them with a warning: docker refuses more) and
    mem_limit with no swap beyond it. Empty when unlimited."""
    out: dict = {}
    if settings.cpus is not None:
        cpus, cores = settings.cpus, os.cpu_count() or 1
        if cpus > cores:
            log.warning("ensemble %s: cpus %g is more than this machine's %d cores; "
                        "using %d", name, cpus, cores, cores)
            cpus = cores
        out["nano_cpus"] = int(round(cpus * 1e9))
    if settings.memory is not None:
        out["mem_limit"] = settings.memory
        out["memswap_limit"] = settings.memory
    return out


class ContainerHosts:
    """What a backend whose hosts are containers of one engine does with
    them, the same for the docker and swarm backends (``self._ids``: each
    ensemble's container id; ``self.client``: the engine): exit codes (a
    container still running at the deadline is killed), stopping them all
    with their logs kept, and the fault timeline's pause/resume (the cgroup
    freezer) and kill (SIGKILL: the container stops, exit 137)."""

    name: str
    run_id: str
    client: Any
    _ids: dict[str, str]
    _logs: dict[str, str]
    # and the backend's own _read_logs(name)

    def __init__(self, image: str | None = None, repo_root: Path | None = None,
                 client=None, run_id: str | None = None) -> None:
        super().__init__(run_id or net.new_net_tag())  # type: ignore[call-arg]
        self.client = client or docker.from_env(timeout=120)
        self.image = image
        self.repo_root = Path(repo_root or REPO_ROOT).resolve()
        self._ids = {}
        self._codes: dict[str, int] = {}
        self._run_dir: Path | None = None
        self._down = False

    def _poll(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for name, cid in self._ids.items():
            state = self.client.api.inspect_container(cid)["State"]
            out[name] = None if state["Running"] else state["ExitCode"]
        return out

    def _container_logs(self, cid: str) -> str:
        """A container's stdout and stderr ("" once it is gone)."""
        try:
            return self.client.api.logs(cid, stdout=True, stderr=True).decode(errors="replace")
        except docker.errors.NotFound:
            return ""

    def _exit_code(self, name: str, cid: str, deadline: float,
                   timeout_s: float) -> tuple[int, bool]:
        """(exit code, whether it exited by itself before ``deadline``); a
        container still running then is killed (code -9)."""
        api = self.client.api
        try:
            return api.wait(cid, timeout=max(0.1, deadline - time.monotonic()))["StatusCode"], True
        except Exception:  # requests' ReadTimeout/ConnectionError: still running
            state = api.inspect_container(cid)["State"]
            if not state["Running"]:
                return state["ExitCode"], True
            log.warning("%s run %s: %s still running after %.1f s, killing",
                        self.name, self.run_id, name, timeout_s)
            try:
                api.kill(cid)
            except docker.errors.APIError:
                pass
            api.wait(cid, timeout=30)
            return -9, False

    def _stop_all(self) -> None:
        """Stop every container (STOP_GRACE_S, then SIGKILL), keeping its
        logs readable after the teardown; never raises."""
        api = self.client.api

        def stop(item: tuple[str, str]) -> None:
            name, cid = item
            try:
                if api.inspect_container(cid)["State"]["Running"]:
                    api.stop(cid, timeout=STOP_GRACE_S)
                self._logs[name] = self._read_logs(name)  # type: ignore[attr-defined]
            except docker.errors.NotFound:
                self._logs.setdefault(name, "")
            except Exception:  # keep going: the teardown removes it regardless
                log.exception("stopping the container of %s", name)

        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(stop, self._ids.items()))

    def _cid(self, name: str) -> str:
        cid = self._ids.get(name)
        if cid is None:
            raise BackendError(f"no container {name!r} in {self.name} run {self.run_id}; "
                               f"hosts: {sorted(self._ids)}")
        return cid

    def pause(self, name: str) -> None:
        self.client.api.pause(self._cid(name))

    def resume(self, name: str) -> None:
        self.client.api.unpause(self._cid(name))

    def kill(self, name: str) -> None:
        self.client.api.kill(self._cid(name))


class DockerBackend(ContainerHosts, Backend):
    """Ensembles as containers of the ensemble image (built on demand)."""

    name = "docker"

    def __init__(self, image: str | None = None, repo_root: Path | None = None,
                 client=None, run_id: str | None = None) -> None:
        super().__init__(image, repo_root, client, run_id)
        #: The netns keeper of each ensemble the topology restarts (see _up).
        self._keepers: dict[str, str] = {}
        self._shared: dict[str, dict[str, str]] = {}

    def share_dir(self, path: str) -> str:
        """Bind ``path`` read-only at SHARED_MOUNT in every container."""
        if self._shared:
            raise BackendError("docker backend shares one directory per run")
        self._shared[str(Path(path).resolve())] = {"bind": SHARED_MOUNT, "mode": "ro"}
        return SHARED_MOUNT

    def _up(self, topology: Topology, run_dir: Path, command: CommandFn) -> dict[str, Host]:
        if self.image is None:
            from testbed.emulate.image import ensure_image
            self.image = ensure_image(self.repo_root, self.client)
        rid, api = self.run_id, self.client.api
        self._run_dir = run_dir
        subnet = net.claim_subnet(rid, self.name, self.client)
        ips = net.host_addresses(subnet, len(topology.ensembles))
        netname = f"ttnet-{rid}"
        api.create_network(
            netname, driver="bridge", labels={LABEL: rid},
            options={"com.docker.network.bridge.name": f"ttdk{rid}"},
            ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(
                subnet=str(subnet), gateway=str(next(subnet.hosts())))]))
        hosts = {name: Host(name, ip, "", "eth0", RESULTS_MOUNT)
                 for name, ip in zip(topology.ensembles, ips, strict=True)}
        # An ensemble the fault timeline restarts gets its network namespace
        # from a keeper container (`sleep`, like a pod's pause container):
        # its agent's container stops at the kill and starts again at the
        # restart, and the namespace -- address, impairments, capture --
        # outlives both.
        restarted = {e.ensemble for e in topology.events
                     if getattr(e, "action", None) == "restart"}

        def keeper(host: Host) -> str:
            kid = api.create_container(
                self.image, ["sleep", "infinity"], name=f"ttnet-{rid}-{host.name}-net",
                hostname=host.name, labels={LABEL: rid, "ttnet.netns-of": host.name},
                host_config=api.create_host_config(network_mode=netname, init=True,
                                                   auto_remove=False),
                networking_config=api.create_networking_config(
                    {netname: api.create_endpoint_config(ipv4_address=host.ip)}),
            )["Id"]
            self._keepers[host.name] = kid
            api.start(kid)
            return kid

        def create_and_start(host: Host) -> tuple[str, str]:
            argv = gated(list(command(host)), f"{RESULTS_MOUNT}/{CTL_DIR}", host.name)
            if host.name in restarted:
                networking: dict = {"network_mode": f"container:{keeper(host)}"}
                named: dict = {}
            else:
                networking = {"network_mode": netname}
                named = {"hostname": host.name, "networking_config":
                         api.create_networking_config(
                             {netname: api.create_endpoint_config(ipv4_address=host.ip)})}
            cid = api.create_container(
                self.image, argv, name=f"ttnet-{rid}-{host.name}",
                labels={LABEL: rid, "ttnet.ensemble": host.name},
                environment={"TTNET_RUN": rid, "TTNET_ENSEMBLE": host.name,
                             "TTNET_RESULTS": RESULTS_MOUNT},
                host_config=api.create_host_config(
                    binds={str(run_dir): {"bind": RESULTS_MOUNT, "mode": "rw"},
                           **self._shared},
                    init=True, auto_remove=False, **networking,
                    **host_limits(topology.settings_of(host.name), host.name)),
                **named,
            )["Id"]
            self._ids[host.name] = cid
            api.start(cid)
            return host.name, cid

        with ThreadPoolExecutor(WORKERS) as pool:
            # list(): re-raise the first failure here; down() removes the rest.
            list(pool.map(create_and_start, hosts.values()))
        for name, cid in self._ids.items():
            state = api.inspect_container(cid)["State"]
            path = f"/proc/{state['Pid']}/ns/net"
            if name in self._keepers:
                path = f"/proc/{api.inspect_container(self._keepers[name])['State']['Pid']}/ns/net"
            if not state["Running"] or not os.path.exists(path):
                raise BackendError(f"container of {name!r} is not running "
                                   f"(exit {state['ExitCode']}): {self._read_logs(name)[-2000:]}")
            hosts[name] = Host(name, hosts[name].ip, path, "eth0", RESULTS_MOUNT)
        log.info("docker run %s: %d containers on %s (%s)", rid, len(hosts), netname, subnet)
        return hosts

    def wait(self, timeout_s: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout_s
        for name, cid in self._ids.items():
            while name not in self._codes:
                self._wait_one(name, cid, deadline, timeout_s)
        return {n: self._codes[n] for n in self._ids}

    def _wait_one(self, name: str, cid: str, deadline: float, timeout_s: float) -> None:
        """Wait for one container to exit and record its code -- unless it
        was killed for a reboot (a restart is due or came meanwhile): then
        record nothing, and wait() waits again, for the fresh agent."""
        with self._restart_lock:
            done_before = self._restarts_done[name]
        code, exited = self._exit_code(name, cid, deadline, timeout_s)
        if not exited:
            self._codes[name] = code
            return
        while self._restart_due(name) and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._restart_lock:
            if self._restarts_done[name] == done_before:
                self._codes[name] = code

    def _read_logs(self, name: str) -> str:
        cid = self._ids.get(name)
        return "" if cid is None else self._container_logs(cid)

    def down(self) -> None:
        if self._down:
            return
        self._down = True
        self._stop_all()
        removed = teardown_run(self.client, self.run_id)
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir / CTL_DIR, ignore_errors=True)
        log.info("docker run %s down: removed %d items", self.run_id, len(removed))

    # --- the fault timeline's restart (pause, resume, kill: ContainerHosts) ---

    def _restart(self, name: str) -> None:
        """Kill the agent's container if it runs (unpaused first) and start
        it again: the same command, in the keeper's namespace (see _up)."""
        api, cid = self.client.api, self._cid(name)
        if name not in self._keepers:
            raise BackendError(f"{name!r} of run {self.run_id} has no namespace keeper: "
                               "only an ensemble with a restart event in the topology "
                               "can be restarted")
        state = api.inspect_container(cid)["State"]
        if state["Paused"]:
            api.unpause(cid)
        if state["Running"]:
            api.kill(cid)
            api.wait(cid, timeout=30)
        api.start(cid)
        log.info("docker run %s: %s restarted", self.run_id, name)
