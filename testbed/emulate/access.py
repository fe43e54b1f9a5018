"""Hands-on access to the hosts of a live ``python -m testbed up``.

Owns the state file ``up`` writes while it holds (``STATE_DIR/<tag>.json``,
a copy in the run directory as ``hosts.json``): backend, run id, the
backend's 6-hex tag, the owning pid, and per ensemble its IP, network
namespace path, interface and (docker) container. ``exec``/``shell`` read
it back (``find_up``) and get the argv that runs a command in one host
(``host_argv``):

- docker: ``docker exec [-i] [-t] <container> CMD...`` (the container
  labelled ``ttnet.ensemble=<name>`` of that run), or, without the docker
  CLI, ``nsenter`` into all the container's namespaces by its pid;
- netns: ``nsenter --net=<netns path> -- CMD...``: the host's own tools
  and file system, inside the ensemble's network namespace.

A state file is live while its owner process lives and the run's claim
(``testbed.emulate.net``) names that process; files of dead owners are
removed when read. Must never: start, stop or change a host; it only
reads what ``up`` recorded and builds command lines.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from testbed.emulate import net

log = logging.getLogger(__name__)

STATE_DIR = Path("/run/ttnet/up")
#: The run directory's copy of the state (for people, not read back).
HOSTS_FILE = "hosts.json"
#: The shell ``shell`` starts: bash where there is one, else sh. --norc
#: keeps the prompt set from PS1 (the ensemble's name) on the netns backend.
SHELL_SCRIPT = ("if command -v bash >/dev/null 2>&1; then exec bash --norc; "
                "else exec sh; fi")


class AccessError(RuntimeError):
    """No such live ``up`` or ensemble, or no way into it; the message says
    what to do (the CLI exits 2)."""


@dataclass(frozen=True)
class HostInfo:
    ip: str
    netns_path: str
    ifname: str
    container: str = ""    # docker: the container's name ("" for netns)


@dataclass(frozen=True)
class UpState:
    run_id: str            # the results directory name (…-up)
    tag: str               # the backend's 6-hex run id (resource names)
    backend: str
    topology: str
    pid: int               # the `up` process
    run_dir: str
    hosts: dict[str, HostInfo] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        """Its owner lives and still holds the run's claim."""
        return any(c.run_id == self.tag and c.pid == self.pid and c.owner_alive
                   for c in net.claims())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "UpState":
        raw = json.loads(text)
        hosts = {n: HostInfo(**h) for n, h in raw.pop("hosts", {}).items()}
        return cls(**raw, hosts=hosts)


def describe_hosts(backend, hosts: dict) -> dict[str, HostInfo]:
    """What exec needs of each host of a live backend (``Host`` objects by
    name); docker containers are found by their ``ttnet.run``/``ttnet.ensemble``
    labels."""
    containers: dict[str, str] = {}
    if backend.name in ("docker", "swarm"):      # swarm: the local task containers
        from testbed.emulate.backends.docker import LABEL
        found = backend.client.api.containers(filters={"label": f"{LABEL}={backend.run_id}"})
        containers = {c["Labels"].get("ttnet.ensemble", ""): c["Names"][0].lstrip("/")
                      for c in found}
    return {n: HostInfo(h.ip, h.netns_path, h.ifname, containers.get(n, ""))
            for n, h in hosts.items()}


def write_state(state: UpState, state_dir: Path | None = None) -> Path:
    """Record a live ``up`` (and a copy in its run directory); returns the file."""
    state_dir = STATE_DIR if state_dir is None else state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / f"{state.tag}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(state.to_json())
    os.replace(tmp, path)
    try:
        (Path(state.run_dir) / HOSTS_FILE).write_text(state.to_json())
    except OSError as exc:
        log.warning("could not write %s in %s: %s", HOSTS_FILE, state.run_dir, exc)
    return path


def remove_state(tag: str, state_dir: Path | None = None) -> None:
    state_dir = STATE_DIR if state_dir is None else state_dir
    (state_dir / f"{tag}.json").unlink(missing_ok=True)


def live_states(state_dir: Path | None = None) -> list[UpState]:
    """Every live ``up``, oldest first; files of dead ones are removed."""
    state_dir = STATE_DIR if state_dir is None else state_dir
    out = []
    for f in sorted(state_dir.glob("*.json"), key=_mtime):
        try:
            state = UpState.from_json(f.read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring unreadable up state %s: %s", f, exc)
            continue
        if state.alive:
            out.append(state)
        else:
            f.unlink(missing_ok=True)
    return out


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:       # removed meanwhile by its `up`
        return 0.0


def find_up(run: str | None = None, state_dir: Path | None = None) -> UpState:
    """The live ``up`` named by ``run`` (its run id, a prefix or suffix of
    it, or the backend's tag), or the only live one. Raises AccessError."""
    states = live_states(state_dir)
    if not states:
        raise AccessError("no `python -m testbed up` is holding hosts on this machine; "
                          "start one, e.g. `python -m testbed up pair`, and keep it running")
    listing = "; ".join(f"{s.run_id} ({s.topology} on {s.backend}, tag {s.tag})"
                        for s in states)
    if run is None:
        if len(states) > 1:
            raise AccessError(f"{len(states)} `up` runs are live: {listing}; "
                              "choose one with --run RUN_ID")
        return states[0]
    chosen = [s for s in states
              if run in (s.run_id, s.tag) or s.run_id.startswith(run) or s.run_id.endswith(run)]
    if len(chosen) != 1:
        problem = "matches no" if not chosen else "matches more than one"
        raise AccessError(f"--run {run} {problem} live `up`; live: {listing}")
    return chosen[0]


def host_of(state: UpState, ensemble: str) -> HostInfo:
    host = state.hosts.get(ensemble)
    if host is None:
        raise AccessError(f"no ensemble {ensemble!r} in `up` run {state.run_id} "
                          f"({state.topology}); its ensembles: {', '.join(state.hosts)}")
    return host


def _container_pid(container: str) -> int:
    import docker
    try:
        state = docker.from_env(timeout=30).api.inspect_container(container)["State"]
    except docker.errors.DockerException as exc:
        raise AccessError(f"container {container} is not readable: {exc}") from None
    if not state.get("Running"):
        raise AccessError(f"container {container} is not running")
    return int(state["Pid"])


def host_argv(state: UpState, ensemble: str, command: list[str], *,
              interactive: bool = False, tty: bool = False) -> tuple[list[str], dict[str, str]]:
    """(argv, extra environment) that runs ``command`` in the ensemble's
    host, with stdin passed through when ``interactive`` (docker needs -i)
    and a terminal when ``tty``. Raises AccessError."""
    if not command:
        raise AccessError("no command given; write e.g. `exec a -- ip -4 addr`")
    host = host_of(state, ensemble)
    env = {"TTNET_ENSEMBLE": ensemble, "TTNET_RUN": state.tag,
           "PS1": f"[ttnet {ensemble}] \\w\\$ "}
    if state.backend in ("docker", "swarm"):
        if not host.container:
            raise AccessError(f"`up` run {state.run_id} recorded no container for {ensemble!r}")
        docker_cli = shutil.which("docker")
        if docker_cli is not None:
            flags = (["-i"] if interactive else []) + (["-t"] if tty else [])
            for k, v in env.items():
                flags += ["-e", f"{k}={v}"]
            return [docker_cli, "exec", *flags, host.container, *command], {}
        # No docker CLI: enter all of the container's namespaces, as docker exec would.
        nsenter = _need("nsenter", "util-linux")
        pid = _container_pid(host.container)
        return [nsenter, "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "--", *command], env
    if state.backend == "netns":
        if not os.path.exists(host.netns_path):
            raise AccessError(f"the network namespace of {ensemble!r} ({host.netns_path}) "
                              "is gone; is the `up` still running?")
        nsenter = _need("nsenter", "util-linux")
        return [nsenter, f"--net={host.netns_path}", "--", *command], env
    raise AccessError(f"`up` run {state.run_id} has an unknown backend {state.backend!r}")


def _need(program: str, package: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise AccessError(f"{program} is not installed; install the Debian package {package}")
    return path


def shell_command() -> list[str]:
    """The command ``shell`` runs in a host."""
    return ["/bin/sh", "-c", SHELL_SCRIPT]
