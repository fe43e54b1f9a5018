"""Backend: one Linux network namespace per ensemble, veths into one bridge.

Owns, per run id ``rid``: namespaces ``ttnet-<rid>-<i>``, host-side veths
``tt<rid>v<i>`` (the peer is ``eth0`` inside the namespace), the bridge
``ttbr<rid>`` (no host address), one iptables FORWARD ACCEPT rule commented
``ttnet-<rid>`` (br_netfilter makes bridged packets traverse FORWARD, whose
policy docker sets to DROP), and the processes started in the namespaces.

Must never: touch interfaces, namespaces or rules without its prefix, or
leave any of them behind after down() or a failed up().
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pyroute2 import IPRoute, netns

from testbed.emulate import net
from testbed.emulate.backends.base import CTL_DIR, Backend, BackendError, CommandFn, Host, gated
from testbed.spec.model import Topology

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
_NS_RE = re.compile(r"^ttnet-([0-9a-f]{6})-\d+$")
_LINK_RE = re.compile(r"^tt(?:br([0-9a-f]{6})|([0-9a-f]{6})[vp]\d+)$")
_COMMENT_RE = re.compile(r'--comment "?ttnet-([0-9a-f]{6})"?')
TERM_GRACE_S = 2.0  # SIGTERM first so agents can flush their event logs


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, check=check)


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BackendError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")


def _forward_rule(rid: str) -> list[str]:
    br = f"ttbr{rid}"
    return ["FORWARD", "-i", br, "-o", br, "-m", "comment", "--comment", f"ttnet-{rid}",
            "-j", "ACCEPT"]


def _kill_netns_pids(ns: str) -> None:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    for pid in out.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def teardown_run(rid: str) -> list[str]:
    """Remove every namespace, link and rule of run rid; return what was removed."""
    removed: list[str] = []
    for ns in netns.listnetns():
        if ns.startswith(f"ttnet-{rid}-"):
            _kill_netns_pids(ns)
            try:
                netns.remove(ns)
                removed.append(f"netns {ns}")
            except OSError as e:
                log.warning("removing netns %s: %s", ns, e)
    with IPRoute() as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            m = _LINK_RE.match(name or "")
            if m and rid in m.groups():
                try:
                    ipr.link("del", index=link["index"])
                    removed.append(f"link {name}")
                except Exception as e:  # already gone with its peer
                    log.debug("removing link %s: %s", name, e)
    # -D removes one copy per call; loop in case a crashed run inserted it twice.
    while shutil.which("iptables") and \
            _iptables("-D", *_forward_rule(rid), check=False).returncode == 0:
        removed.append(f"iptables rule ttnet-{rid}")
    net.release_run(rid)
    return removed


def resources() -> list[tuple[str, str]]:
    """(run id, description) of every ttnet namespace, link and FORWARD
    rule on this host, live runs' included. Reads only."""
    found: list[tuple[str, str]] = []
    for ns in netns.listnetns():
        if m := _NS_RE.match(ns):
            found.append((m.group(1), f"netns {ns}"))
    with IPRoute() as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME") or ""
            if m := _LINK_RE.match(name):
                found.append((m.group(1) or m.group(2), f"link {name}"))
    if shutil.which("iptables"):
        for rid in _COMMENT_RE.findall(_iptables("-S", "FORWARD", check=False).stdout):
            found.append((rid, f"iptables FORWARD rule ttnet-{rid}"))
    return found


def stale_run_ids() -> set[str]:
    """Run ids that own netns resources but no live claim."""
    rids = {rid for rid, _ in resources()}
    rids |= {c.run_id for c in net.claims() if c.backend == "netns"}
    live = {c.run_id for c in net.claims() if c.owner_alive}
    return rids - live


def cleanup_stale() -> list[str]:
    removed: list[str] = []
    for rid in sorted(stale_run_ids()):
        removed += teardown_run(rid)
    return removed


class NetnsBackend(Backend):
    """Ensembles as namespaces; commands run with this interpreter (sys.executable)."""

    name = "netns"

    def __init__(self, repo_root: Path | None = None, run_id: str | None = None) -> None:
        super().__init__(run_id or net.new_net_tag())
        self.repo_root = Path(repo_root or REPO_ROOT).resolve()
        self._procs: dict[str, subprocess.Popen] = {}
        self._launch: dict[str, tuple[list[str], dict[str, str]]] = {}   # for restart
        self._codes: dict[str, int] = {}
        self._logdir: Path | None = None
        self._run_dir: Path | None = None
        self._down = False

    def _up(self, topology: Topology, run_dir: Path, command: CommandFn) -> dict[str, Host]:
        if os.geteuid() != 0:
            raise BackendError("the netns backend needs root (CAP_NET_ADMIN); run as root")
        rid = self.run_id
        self._run_dir = run_dir
        if topology.limits:
            log.warning("netns backend: cpus:/memory: limits of %s are not applied "
                        "(namespaces share this machine's CPU and memory); use "
                        "--backend docker for device-like hosts",
                        ", ".join(sorted(topology.limits)))
        subnet = net.claim_subnet(rid, self.name)
        ips = net.host_addresses(subnet, len(topology.ensembles))
        bridge = f"ttbr{rid}"
        hosts: dict[str, Host] = {}
        nss = [f"ttnet-{rid}-{i}" for i in range(len(topology.ensembles))]
        with IPRoute() as ipr:
            ipr.link("add", ifname=bridge, kind="bridge")
            br_idx = ipr.link_lookup(ifname=bridge)[0]
            ipr.link("set", index=br_idx, state="up")
            if shutil.which("iptables"):
                rule = _forward_rule(rid)
                _iptables("-I", rule[0], "1", *rule[1:])
            for i, ns in enumerate(nss):
                netns.create(ns)
                ipr.link("add", ifname=f"tt{rid}v{i}", kind="veth", peer=f"tt{rid}p{i}")
                ipr.link("set", index=ipr.link_lookup(ifname=f"tt{rid}p{i}")[0], net_ns_fd=ns)
                ipr.link("set", index=ipr.link_lookup(ifname=f"tt{rid}v{i}")[0],
                         master=br_idx, state="up")
        for i, (ns, name, ip) in enumerate(zip(nss, topology.ensembles, ips, strict=True)):
            # Inside the namespace we use ip(8): pyroute2 0.9's NetNS/IPRoute(netns=)
            # hangs when nested in an open IPRoute and, used repeatedly in one
            # process, sometimes looks into the wrong namespace.
            for args in (["link", "set", f"tt{rid}p{i}", "name", "eth0"],
                         ["addr", "add", f"{ip}/{subnet.prefixlen}", "dev", "eth0"],
                         ["link", "set", "eth0", "up"], ["link", "set", "lo", "up"]):
                _ip("-n", ns, *args)
            hosts[name] = Host(name, ip, f"/run/netns/{ns}", "eth0", str(run_dir))
        self._logdir = Path(tempfile.mkdtemp(prefix=f"ttnet-{rid}-logs-"))
        env = {**os.environ, "PYTHONPATH": str(self.repo_root), "PYTHONUNBUFFERED": "1",
               "TTNET_RUN": rid, "TTNET_RESULTS": str(run_dir)}
        for i, (name, host) in enumerate(hosts.items()):
            argv = list(command(host))
            if argv and argv[0] in ("python3", "python"):
                argv[0] = sys.executable
            full = ["ip", "netns", "exec", f"ttnet-{rid}-{i}",
                    *gated(argv, str(run_dir / CTL_DIR), name, python=sys.executable)]
            self._launch[name] = (full, {**env, "TTNET_ENSEMBLE": name})
            self._procs[name] = self._start(name, "wb")
        log.info("netns run %s: %d hosts on %s (%s)", rid, len(hosts), bridge, subnet)
        return hosts

    def _start(self, name: str, mode: str) -> subprocess.Popen:
        argv, env = self._launch[name]
        assert self._logdir is not None and self._run_dir is not None
        with (self._logdir / f"{name}.log").open(mode) as out:
            # own session: Ctrl-C at the terminal reaches us, and we kill the group.
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=env,
                                    cwd=str(self._run_dir), start_new_session=True)

    def _poll(self) -> dict[str, int | None]:
        with self._restart_lock:
            procs = dict(self._procs)
        return {n: p.poll() for n, p in procs.items()}

    def wait(self, timeout_s: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout_s
        # A host killed for a reboot still due is not done: its fresh command is.
        while time.monotonic() < deadline and (
                any(c is None for c in self._poll().values()) or self._restart_due()):
            time.sleep(0.05)
        for name, p in self._procs.items():
            if p.poll() is None:
                log.warning("netns run %s: %s still running after %.1f s, killing",
                            self.run_id, name, timeout_s)
                _killpg(p, signal.SIGKILL)
                p.wait()
                self._codes[name] = -9
            else:
                self._codes.setdefault(name, p.returncode)
        return {n: self._codes[n] for n in self._procs}

    def _read_logs(self, name: str) -> str:
        if self._logdir is None or not (self._logdir / f"{name}.log").exists():
            return ""
        return (self._logdir / f"{name}.log").read_text(errors="replace")

    def down(self) -> None:
        if self._down:
            return
        self._down = True
        live = [p for p in self._procs.values() if p.poll() is None]
        for p in live:
            _killpg(p, signal.SIGTERM)
        end = time.monotonic() + TERM_GRACE_S
        for p in live:
            try:
                p.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                _killpg(p, signal.SIGKILL)
                p.wait()
        for name in self._procs:
            self._logs[name] = self._read_logs(name)
        removed = teardown_run(self.run_id)
        if self._logdir is not None:
            shutil.rmtree(self._logdir, ignore_errors=True)
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir / CTL_DIR, ignore_errors=True)
        log.info("netns run %s down: removed %d items", self.run_id, len(removed))

    # --- the fault timeline's ensemble actions: SIGSTOP, SIGCONT, SIGKILL to
    # every process of the host's namespace (the agent, its program in a
    # session of its own, anything they started) ---

    def _signal_host(self, name: str, sig: int) -> list[int]:
        host = self.hosts.get(name)
        if host is None:
            raise BackendError(f"no host {name!r} in run {self.run_id}; "
                               f"hosts: {sorted(self.hosts)}")
        out = subprocess.run(["ip", "netns", "pids", Path(host.netns_path).name],
                             capture_output=True, text=True).stdout
        pids = [int(pid) for pid in out.split() if pid.isdigit()]
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        log.info("netns run %s: signal %d to %s (pids %s)", self.run_id, sig, name, pids)
        return pids

    def pause(self, name: str) -> None:
        self._signal_host(name, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self._signal_host(name, signal.SIGCONT)

    def kill(self, name: str) -> None:
        self._signal_host(name, signal.SIGKILL)
        proc = self._procs.get(name)
        if proc is not None:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                log.warning("netns run %s: %s survived SIGKILL for 10 s", self.run_id, name)

    def _restart(self, name: str) -> None:
        """SIGKILL the host's command and everything it started (not other
        processes in the namespace, e.g. a capture's tcpdump), then start
        the command again; the namespace, its address and impairments stay."""
        proc = self._procs.get(name)
        if proc is None or name not in self._launch:
            raise BackendError(f"no host {name!r} in run {self.run_id}; "
                               f"hosts: {sorted(self.hosts)}")
        if proc.poll() is None:
            tree = _descendants(proc.pid)
            for pid in tree:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                log.warning("netns run %s: %s survived SIGKILL for 10 s", self.run_id, name)
            log.info("netns run %s: SIGKILL to %s for a restart (pids %s)",
                     self.run_id, name, tree)
        fresh = self._start(name, "ab")
        with self._restart_lock:
            self._procs[name] = fresh
        log.info("netns run %s: %s restarted (pid %d)", self.run_id, name, fresh.pid)


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it (read from /proc at once, so
    killing them all leaves none re-parented and missed)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def _killpg(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass
