"""Backend: one Docker Swarm service (one replica task) per ensemble.

The first slice of running past one machine. Owns, per run id ``rid``:
the attachable, internal overlay network ``ttnet-<rid>`` (an explicit free
/24 from ``testbed.emulate.net``, as the docker backend's bridge) and the
services ``ttnet-<rid>-<ensemble>``, all labelled ``ttnet.run=<rid>`` (the
task containers too, plus ``ttnet.ensemble=<name>``), and any swarm config
so labelled. Each service runs the ensemble image by its image ID (no
registry: a task never tries to pull), one replica, restart policy
``none``, spread over the nodes (``placement`` constraints per ensemble
narrow that), with NET_ADMIN granted to the task (``cap_add``), never to
the host. The run directory is bind-mounted at ``/results``.

The clock reference: one plain container ``ttnet-<rid>-clock`` (not a
service) of the same image, started through this engine -- so on this
node, on this host's kernel clock -- and attached to the run's overlay,
runs the UDP time responder (:mod:`testbed.guest.clock`) on CLOCK_PORT.
``clock_reference`` is its "ip:port"; agents measure their clocks against
it. It is no ensemble: no impairment names its address (they match per
destination address of the ensembles), it has no start gate, and down()
stops it (its log goes to ``logs/clock.log``) and removes it with the
rest (label ``ttnet.role=clock`` beside ``ttnet.run=<rid>``).

Impairments go into each task's own network namespace with the docker
backend's machinery (``Host.netns_path`` is ``/proc/<pid>/ns/net`` of the
task's container): this needs the task on *this* node. A task scheduled
elsewhere is refused in this slice (docs/swarm.md says what more nodes
need: the image on every node -- ``distribute_image`` -- a run directory
shared at the same path, and impairments applied on each node).

Must never: pull images, initialise, join or leave a swarm, touch services,
networks, configs or containers without its label, or leave any of them
behind after down() or a failed up().
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import docker.errors
import docker.types

from testbed.emulate import net
from testbed.emulate.backends.base import CTL_DIR, Backend, BackendError, CommandFn, Host, gated
from testbed.emulate.backends.docker import (LABEL, RESULTS_MOUNT, SHARED_MOUNT,
                                             STOP_GRACE_S, WORKERS, ContainerHosts,
                                             client_or_none, remove_networks,
                                             host_limits)
from testbed.emulate.impair.rate import ImpairError
from testbed.spec.clocks import CLOCK_PORT
from testbed.spec.model import Topology
from testbed.spec.topology import PLACEMENT_PATTERN

log = logging.getLogger(__name__)

ENSEMBLE_LABEL = "ttnet.ensemble"
BACKEND_LABEL = "ttnet.backend"
#: ``clock`` on the clock reference's container (no swarm task: removed
#: first by teardown_run, swarm does not remove it with the services).
ROLE_LABEL = "ttnet.role"
#: Granted to every task: impairments (tc, iptables NFQUEUE) inside its own
#: namespace. The host keeps its capabilities to itself.
CAP_ADD = ("CAP_NET_ADMIN",)
#: A service name is a DNS label: letters, digits, '-' and '_' inside, at
#: most 63 characters ("ttnet-" + rid + "-" takes 13 of them).
_SERVICE_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?$")
SERVICE_NAME_MAX = 63
#: How long up() waits for every task to be running with a container here.
TASK_TIMEOUT_S = 90
#: How long down() waits for the task containers to go before the network.
REMOVE_TIMEOUT_S = 30
#: Task states after which a task never runs again.
_FINAL = {"complete", "failed", "shutdown", "rejected", "orphaned", "remove"}
#: A placement constraint: ``<attribute>==<value>`` or ``<attribute>!=<value>``.
_CONSTRAINT = re.compile(PLACEMENT_PATTERN)


def service_name(rid: str, ensemble: str) -> str:
    """The service of an ensemble; BackendError if its name cannot be one."""
    name = f"ttnet-{rid}-{ensemble}"
    if not _SERVICE_NAME.match(ensemble) or len(name) > SERVICE_NAME_MAX:
        raise BackendError(
            f"ensemble name {ensemble!r} cannot name a swarm service ({name!r}): use "
            f"letters, digits, '-' and '_' (no '.'), starting and ending with a letter "
            f"or digit, at most {SERVICE_NAME_MAX - len(f'ttnet-{rid}-')} characters")
    return name


def validate_constraints(constraints, ensemble: str = "?") -> tuple[str, ...]:
    """Swarm placement constraints (``node.role==worker``,
    ``node.labels.zone!=edge``...) as a tuple; BackendError on a bad one."""
    if constraints is None:
        return ()
    if isinstance(constraints, str) or not all(isinstance(c, str) for c in constraints):
        raise BackendError(f"ensemble {ensemble!r}: placement must be a list of constraint "
                           f"strings like 'node.role==worker', got {constraints!r}")
    for c in constraints:
        if not _CONSTRAINT.match(c):
            raise BackendError(f"ensemble {ensemble!r}: placement constraint {c!r} is not "
                               "'<attribute>==<value>' or '<attribute>!=<value>', e.g. "
                               "node.hostname==edge1 or node.labels.zone==lab")
    return tuple(c.strip() for c in constraints)


def resources(settings, name: str = "?"):
    """The task's limits for an ensemble's ``cpus:``/``memory:`` (None if
    neither): a CPU quota (NanoCPUs, enforced like ``docker run --cpus``,
    lowered to this machine's cores as the docker backend does) and a
    memory limit."""
    limits = host_limits(settings, name)
    if not limits:
        return None
    return docker.types.Resources(cpu_limit=limits.get("nano_cpus"),
                                  mem_limit=limits.get("mem_limit"))


def service_spec(*, rid: str, ensemble: str, image: str, argv: list[str], network: str,
                 run_dir: str, shared: dict[str, str] | None = None,
                 constraints: tuple[str, ...] = (), settings=None) -> dict:
    """The keyword arguments of ``client.api.create_service`` for one ensemble."""
    labels = {LABEL: rid, ENSEMBLE_LABEL: ensemble, BACKEND_LABEL: "swarm"}
    mounts = [docker.types.Mount(RESULTS_MOUNT, run_dir, type="bind")]
    mounts += [docker.types.Mount(target, source, type="bind", read_only=True)
               for source, target in (shared or {}).items()]
    container = docker.types.ContainerSpec(
        image, command=list(argv), hostname=ensemble, labels=dict(labels),
        env={"TTNET_RUN": rid, "TTNET_ENSEMBLE": ensemble, "TTNET_RESULTS": RESULTS_MOUNT},
        mounts=mounts, init=True, cap_add=list(CAP_ADD),
        stop_grace_period=int(STOP_GRACE_S * 1e9))
    task = docker.types.TaskTemplate(
        container,
        resources=resources(settings, ensemble) if settings is not None else None,
        restart_policy=docker.types.RestartPolicy(condition="none"),
        # Spread over the nodes (what swarm does by default; said here so a
        # node label preference can be added next to it).
        placement=docker.types.Placement(constraints=list(constraints) or None,
                                         preferences=[("spread", "node.id")]),
        networks=[docker.types.NetworkAttachmentConfig(network)])
    return {"task_template": task, "name": service_name(rid, ensemble), "labels": labels,
            "mode": docker.types.ServiceMode("replicated", replicas=1),
            # dnsrr: no virtual IP per service; the agents address tasks directly.
            "endpoint_spec": docker.types.EndpointSpec(mode="dnsrr")}


def swarm_state(client) -> tuple[str, bool, str]:
    """(LocalNodeState, ControlAvailable, NodeID) of this engine."""
    info = client.api.info().get("Swarm") or {}
    return (info.get("LocalNodeState", "inactive"), bool(info.get("ControlAvailable")),
            info.get("NodeID", ""))


def _is_manager(client) -> bool:
    try:
        state, manager, _ = swarm_state(client)
    except Exception:
        return False
    return state == "active" and manager


def teardown_run(client, rid: str, wait_s: float = REMOVE_TIMEOUT_S) -> list[str]:
    """Remove every service, config, task container and network labelled with
    run rid (in that order: a network goes only once its tasks are gone)."""
    removed: list[str] = []
    flt = {"label": f"{LABEL}={rid}"}
    # The clock reference is a plain container: no service takes it away.
    for c in client.api.containers(all=True, filters=flt):
        if (c.get("Labels") or {}).get(ROLE_LABEL) == "clock":
            try:
                client.api.remove_container(c["Id"], force=True)
                removed.append(f"container {c['Names'][0].lstrip('/')}")
            except docker.errors.NotFound:
                pass
    if _is_manager(client):
        for s in client.api.services(filters=flt):
            try:
                client.api.remove_service(s["ID"])
                removed.append(f"service {s['Spec']['Name']}")
            except docker.errors.NotFound:
                pass
        try:
            configs = client.api.configs(filters=flt)
        except docker.errors.APIError:
            configs = []
        for c in configs:
            try:
                client.api.remove_config(c["ID"])
                removed.append(f"config {c['Spec']['Name']}")
            except docker.errors.NotFound:
                pass
    # Swarm removes a removed service's containers itself; wait for that,
    # then remove what is left (e.g. the service went with the swarm).
    deadline = time.monotonic() + wait_s
    services_went = any(r.startswith("service ") for r in removed)
    while services_went and client.api.containers(all=True, filters=flt) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    for c in client.api.containers(all=True, filters=flt):
        try:
            client.api.remove_container(c["Id"], force=True)
            removed.append(f"container {c['Names'][0].lstrip('/')}")
        except docker.errors.NotFound:
            pass
    # An overlay keeps its endpoints a moment after its last task went.
    removed += remove_networks(client, flt, max(1.0, deadline - time.monotonic()))
    net.release_run(rid)
    return removed


def resources_present(client=None) -> list[tuple[str, str]]:
    """(run id, description) of every ttnet swarm service and config; nothing
    when the engine does not answer or is no swarm manager. Reads only.
    (Task containers and the overlay network are the docker backend's
    listing: they carry the same label.)"""
    client = client or client_or_none()
    if client is None or not _is_manager(client):
        return []
    return [(s["Spec"]["Labels"][LABEL], f"swarm service {s['Spec']['Name']}")
            for s in client.api.services(filters={"label": LABEL})]


def cleanup_stale(client=None) -> list[str]:
    """Remove swarm leftovers (services, configs, then their containers and
    networks) of runs whose owner process is gone."""
    client = client or client_or_none()
    if client is None or not _is_manager(client):
        return []
    rids = {s["Spec"]["Labels"][LABEL] for s in client.api.services(filters={"label": LABEL})}
    rids |= {c.run_id for c in net.claims() if c.backend == "swarm"}
    live = {c.run_id for c in net.claims() if c.owner_alive}
    removed: list[str] = []
    for rid in sorted(rids - live):
        removed += teardown_run(client, rid)
    return removed


def distribute_image(client, image: str, engines: list, missing_only: bool = True) -> list[str]:
    """Copy ``image`` from this engine into each of ``engines`` (docker
    clients of the other nodes, e.g. ``docker.DockerClient(base_url=
    "ssh://user@node2")``) as ``docker save | docker load`` through their
    engine APIs: no registry. The image ID stays the same, so services that
    name the image by ID find it on every node. Returns the engines' names
    it loaded into."""
    loaded: list[str] = []
    for remote in engines:
        if missing_only:
            try:
                remote.api.inspect_image(image)
                continue
            except docker.errors.ImageNotFound:
                pass
        remote.api.load_image(client.api.get_image(image))
        loaded.append(getattr(remote.api, "base_url", "?"))
        log.info("image %s loaded into %s", image, loaded[-1])
    return loaded


def engines_from_env(env: dict | None = None) -> list:
    """Clients of ``TTNET_SWARM_ENGINES`` (comma-separated engine URLs of the
    other nodes: ``ssh://user@node2,tcp://node3:2376``); empty if unset."""
    raw = (env if env is not None else os.environ).get("TTNET_SWARM_ENGINES", "")
    return [docker.DockerClient(base_url=u.strip(), timeout=600)
            for u in raw.split(",") if u.strip()]


class SwarmBackend(ContainerHosts, Backend):
    """Ensembles as one-replica swarm services of the ensemble image."""

    name = "swarm"

    def __init__(self, image: str | None = None, repo_root: Path | None = None,
                 client=None, run_id: str | None = None) -> None:
        super().__init__(image, repo_root, client, run_id)   # _ids: task containers
        self._services: dict[str, str] = {}     # ensemble -> service id
        self._shared: dict[str, str] = {}
        self.network: str = f"ttnet-{self.run_id}"
        self.subnet: ipaddress.IPv4Network | None = None
        self._clock_id: str | None = None

    def share_dir(self, path: str) -> str:
        """Bind ``path`` read-only at SHARED_MOUNT in every task."""
        if self._shared:
            raise BackendError("swarm backend shares one directory per run")
        self._shared[str(Path(path).resolve())] = SHARED_MOUNT
        return SHARED_MOUNT

    def _check_swarm(self) -> str:
        state, manager, node = swarm_state(self.client)
        if state != "active":
            raise BackendError(
                f"this Docker engine is not part of a swarm (state {state!r}); start one "
                "with `docker swarm init --advertise-addr 127.0.0.1` (one node) or join "
                "this node to yours as a manager (docs/swarm.md)")
        if not manager:
            raise BackendError("this Docker engine is a swarm worker; run the testbed on a "
                               "manager node (docs/swarm.md)")
        return node

    def _up(self, topology: Topology, run_dir: Path, command: CommandFn) -> dict[str, Host]:
        node = self._check_swarm()
        rid, api = self.run_id, self.client.api
        for e in topology.ensembles:        # a bad name fails before anything is made
            service_name(rid, e)
        placement = {e: validate_constraints(
            getattr(topology.settings_of(e), "placement", None), e) for e in topology.ensembles}
        if self.image is None:
            from testbed.emulate.image import ensure_image
            self.image = ensure_image(self.repo_root, self.client)
        # By ID: a task never tries a registry for it, and the ID survives
        # `docker save | docker load` onto other nodes.
        image_id = api.inspect_image(self.image)["Id"]
        engines = engines_from_env()
        if engines:
            distribute_image(self.client, image_id, engines)
        self._run_dir = run_dir
        self.subnet = net.claim_subnet(rid, self.name, self.client)
        api.create_network(
            self.network, driver="overlay", attachable=True, internal=True,
            labels={LABEL: rid, BACKEND_LABEL: "swarm"}, check_duplicate=True,
            ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(
                subnet=str(self.subnet), gateway=str(next(self.subnet.hosts())))]))
        self._start_clock(image_id)
        ctl = f"{RESULTS_MOUNT}/{CTL_DIR}"

        def create(ensemble: str) -> None:
            # command() sees no address: a task's is known only once it runs.
            argv = gated(list(command(Host(ensemble, "", "", "eth0", RESULTS_MOUNT))),
                         ctl, ensemble)
            spec = service_spec(rid=rid, ensemble=ensemble, image=image_id, argv=argv,
                                network=self.network, run_dir=str(run_dir),
                                shared=self._shared, constraints=placement[ensemble],
                                settings=topology.settings_of(ensemble))
            self._services[ensemble] = api.create_service(**spec)["ID"]

        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(create, topology.ensembles))
        tasks = self._await_tasks(node)
        hosts: dict[str, Host] = {}
        for ensemble in topology.ensembles:
            task = tasks[ensemble]
            cid = task["Status"]["ContainerStatus"]["ContainerID"]
            self._ids[ensemble] = cid
            ip = _task_ip(task, self.network)
            state = api.inspect_container(cid)["State"]
            path = f"/proc/{state['Pid']}/ns/net"
            try:
                if not state["Running"]:
                    raise FileNotFoundError(path)
                ifname = _ifname_of(path, ip)
            except (OSError, ImpairError) as exc:  # it exited meanwhile (a bad command)
                code = api.wait(cid, timeout=10)["StatusCode"] \
                    if state["Running"] else state["ExitCode"]
                raise BackendError(f"task of {ensemble!r} is not running (exit {code}): "
                                   f"{self._read_logs(ensemble)[-2000:]}") from exc
            hosts[ensemble] = Host(ensemble, ip, path, ifname, RESULTS_MOUNT)
        log.info("swarm run %s: %d services on %s (%s)", rid, len(hosts), self.network,
                 self.subnet)
        return hosts

    def _start_clock(self, image: str) -> None:
        """Start the clock reference on this node, on the run's overlay,
        and set ``clock_reference`` to its address."""
        rid, api = self.run_id, self.client.api
        cid = api.create_container(
            image, ["python3", "-m", "testbed.guest.clock", "--port", str(CLOCK_PORT)],
            name=f"ttnet-{rid}-clock", hostname="clock",
            labels={LABEL: rid, BACKEND_LABEL: "swarm", ROLE_LABEL: "clock"},
            host_config=api.create_host_config(network_mode=self.network, init=True,
                                               auto_remove=False),
            networking_config=api.create_networking_config(
                {self.network: api.create_endpoint_config()}))["Id"]
        self._clock_id = cid
        api.start(cid)
        info = api.inspect_container(cid)
        ip = ((info.get("NetworkSettings") or {}).get("Networks") or {}) \
            .get(self.network, {}).get("IPAddress")
        if not info["State"]["Running"] or not ip:
            raise BackendError(f"the clock reference container is not running on "
                               f"{self.network} (state {info['State'].get('Status')}): "
                               f"{self._container_logs(cid)[-2000:]}")
        self.clock_reference = f"{ip}:{CLOCK_PORT}"
        log.info("swarm run %s: clock reference at %s", rid, self.clock_reference)

    def _stop_clock(self) -> None:
        """Stop the clock reference (it prints what it answered) and keep
        its log as ``logs/clock.log``; never raises."""
        if self._clock_id is None:
            return
        try:
            api = self.client.api
            if api.inspect_container(self._clock_id)["State"]["Running"]:
                api.stop(self._clock_id, timeout=STOP_GRACE_S)
            text = self._container_logs(self._clock_id)
            if self._run_dir is not None and (self._run_dir / "logs").is_dir():
                (self._run_dir / "logs" / "clock.log").write_text(text)
        except Exception:  # the teardown removes it regardless
            log.debug("stopping the clock reference", exc_info=True)

    def _await_tasks(self, node: str) -> dict[str, dict]:
        """Each service's task, once it runs with a container on this node."""
        api = self.client.api
        deadline = time.monotonic() + TASK_TIMEOUT_S
        found: dict[str, dict] = {}
        while len(found) < len(self._services):
            for ensemble, sid in self._services.items():
                if ensemble in found:
                    continue
                for t in api.tasks(filters={"service": sid}):
                    st = t.get("Status", {})
                    state = st.get("State", "")
                    if state in _FINAL:
                        raise BackendError(
                            f"task of {ensemble!r} ended {state} before starting: "
                            f"{st.get('Err') or st.get('Message', '')}; "
                            f"{self._service_logs(sid)[-2000:]}")
                    if state == "running":
                        if t.get("NodeID") != node:
                            raise BackendError(
                                f"task of {ensemble!r} runs on node {t.get('NodeID')}, not "
                                "this one: this slice impairs links only in tasks on the "
                                "manager it runs on; constrain the ensembles to it "
                                "(placement: [node.role==manager]) -- docs/swarm.md")
                        found[ensemble] = t
            if len(found) < len(self._services):
                if time.monotonic() > deadline:
                    waiting = sorted(set(self._services) - set(found))
                    raise BackendError(f"swarm tasks of {waiting} not running after "
                                       f"{TASK_TIMEOUT_S} s (no node fits their placement?)")
                time.sleep(0.1)
        return found

    def _service_logs(self, sid: str) -> str:
        try:
            out = self.client.api.service_logs(sid, stdout=True, stderr=True, follow=False)
            return b"".join(out).decode(errors="replace")
        except Exception:
            return ""

    def wait(self, timeout_s: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout_s
        for name, cid in self._ids.items():
            if name not in self._codes:
                self._codes[name] = self._exit_code(name, cid, deadline, timeout_s)[0]
        return {n: self._codes[n] for n in self._ids}

    def _read_logs(self, name: str) -> str:
        cid = self._ids.get(name)
        if cid is None:
            sid = self._services.get(name)
            return self._service_logs(sid) if sid else ""
        return self._container_logs(cid)

    def down(self) -> None:
        if self._down:
            return
        self._down = True
        try:
            self._stop_all()
            self._stop_clock()
        finally:
            removed = teardown_run(self.client, self.run_id)
            if self._run_dir is not None:
                shutil.rmtree(self._run_dir / CTL_DIR, ignore_errors=True)
        log.info("swarm run %s down: removed %d items", self.run_id, len(removed))

    # pause, resume and kill of the fault timeline: ContainerHosts, on the
    # task's container (restart is not supported on swarm yet)


def _task_ip(task: dict, network: str) -> str:
    """The task's IPv4 on the run's overlay."""
    for att in task.get("NetworksAttachments") or []:
        if (att.get("Network") or {}).get("Spec", {}).get("Name") == network:
            for addr in att.get("Addresses") or []:
                return addr.split("/")[0]
    raise BackendError(f"task {task.get('ID')} has no address on {network}")


def _ifname_of(netns_path: str, ip: str) -> str:
    """The interface carrying ``ip`` inside that namespace (the overlay's)."""
    from testbed.emulate.impair.rules import run_in_netns
    out = run_in_netns(netns_path, ["ip", "-j", "-4", "addr"]).stdout
    for link in json.loads(out or "[]"):
        if any(a.get("local") == ip for a in link.get("addr_info", [])):
            return link["ifname"]
    raise BackendError(f"no interface with {ip} in {netns_path}")
