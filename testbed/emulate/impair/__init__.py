"""Per-directed-link impairments, applied from the host into namespaces.

One ``Impairments`` per run. ``apply(netns, ifname, egress)`` impairs traffic
leaving that namespace, per destination IPv4, with one of two engines:

- ``netem``: kernel qdiscs (htb class + netem leaf + u32 dst filter) where
  the kernel has sch_netem;
- ``nfqueue``: iptables NFQUEUE rules in the namespace and one host verdict
  daemon (``nfqueue.py``) that delays/drops/duplicates/corrupts, plus htb
  classes for rate limits.

``update(netns, ifname, dst, spec)`` changes one link of a running run in
place (the fault timeline, ``testbed set``): nothing is restarted and
other links' packets are undisturbed. netem: ``tc class change`` +
``tc qdisc change``; nfqueue: the daemon's ``set`` op, ``tc class change``
for the rate. A link that was clean at ``apply`` gets its rule, class or
filter added then.

It owns everything it installs and removes it in ``close()`` (idempotent,
also after a failed apply, on Ctrl-C via the context manager, and at
interpreter exit). It never creates or deletes namespaces or interfaces and
never touches the host namespace's rules or qdiscs.
"""
from __future__ import annotations

import atexit
import json
import logging
import math
import os
import select
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from testbed.spec.model import LinkSpec
from testbed.emulate.impair import netem, rate, rules
from testbed.emulate.impair.rate import ImpairError

__all__ = ["Impairments", "ImpairError", "detect_engine", "sweep", "ENGINES"]

log = logging.getLogger("ttnet.impair")

ENGINES = ("netem", "nfqueue")
QUEUE_NUM = 7474  # queues are per namespace, so one number serves all
DAEMON_PATH = Path(__file__).with_name("nfqueue.py")
DAEMON_REPLY_TIMEOUT_S = 10.0
DAEMON_STOP_TIMEOUT_S = 5.0
_PROBE_HANDLE = "7475:"


def _tc(netns_path: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run the host's ``tc`` in the namespace (tests replace this)."""
    return rules.run_in_netns(netns_path, ["tc", *args], check=False)


def detect_engine(netns_path: str, ifname: str) -> str:
    """"netem" if a netem root qdisc can be added on ifname, else "nfqueue".

    Detects by trying: adds a throw-away netem root and removes it again.
    """
    added = _tc(netns_path, ["qdisc", "add", "dev", ifname, "root",
                             "handle", _PROBE_HANDLE, "netem", "delay", "0ms"])
    if added.returncode == 0:
        _tc(netns_path, ["qdisc", "del", "dev", ifname, "root", "handle", _PROBE_HANDLE])
        return "netem"
    reason = added.stderr.strip()
    if "unknown" not in reason.lower():
        # Not "no such qdisc kind" (e.g. a root qdisc already exists): netem
        # might exist, but nfqueue works everywhere, so use it and say why.
        log.warning("netem probe on %s in %s failed (%s); using nfqueue",
                    ifname, netns_path, reason)
    return "nfqueue"


def sweep(netns_path: str, ifname: str, run_id: str = "") -> list[str]:
    """Remove leftovers of a crashed run (or of all runs if run_id is "").

    For when close() never ran (the process was SIGKILLed): deletes the
    ``ttnet-<run_id>*`` mangle chains and our htb root in the namespace.
    Returns what was removed. The daemon itself exits on its own when its
    parent dies (stdin EOF).
    """
    prefix = f"ttnet-{run_id}"
    removed = []
    for line in rules.list_rules(netns_path).splitlines():
        parts = line.split()
        if parts[:1] == ["-N"] and parts[1].startswith(prefix):
            rules.remove(netns_path, parts[1])
            removed.append(f"chain {parts[1]}")
    if rate.remove_tree(netns_path, ifname):
        removed.append(f"qdisc {rate.ROOT_MAJOR:x}: on {ifname}")
    return removed


def _validate(netns_path: str, egress: dict[str, LinkSpec]) -> None:
    if not Path(netns_path).exists():
        raise ImpairError(f"netns path {netns_path} does not exist; pass "
                          "/run/netns/NAME or /proc/PID/ns/net of a live process")
    for dst, spec in egress.items():
        rate.u32_dst_key(dst)
        if not isinstance(spec, LinkSpec):
            raise ImpairError(f"egress[{dst!r}] is {type(spec).__name__}, "
                              "expected testbed.spec.model.LinkSpec")
        for name in ("delay_s", "jitter_s"):
            v = getattr(spec, name)
            if not (math.isfinite(v) and v >= 0):
                raise ImpairError(f"link to {dst}: {name}={v} must be >= 0 seconds")
        for name in ("loss", "duplicate", "corrupt"):
            v = getattr(spec, name)
            if not 0 <= v <= 1:
                raise ImpairError(f"link to {dst}: {name}={v} must be a fraction "
                                  "in [0, 1] (e.g. 0.1 for 10 %)")
        if spec.rate_bps is not None and not spec.rate_bps > 0:
            raise ImpairError(f"link to {dst}: rate_bps={spec.rate_bps} must be "
                              "> 0 bits/s, or None for unlimited")


def _needs_daemon(spec: LinkSpec) -> bool:
    return bool(spec.delay_s or spec.jitter_s or spec.loss
                or spec.duplicate or spec.corrupt)


def _daemon_spec(spec: LinkSpec) -> dict[str, float]:
    return {k: getattr(spec, k) for k in ("delay_s", "jitter_s", "loss", "duplicate",
                                           "corrupt")}


def _tc_checked(netns_path: str, args: list[str]) -> None:
    done = _tc(netns_path, args)
    if done.returncode != 0:
        raise ImpairError(f"tc {' '.join(args)} in {netns_path} failed: "
                          f"{(done.stderr or '').strip()}")


@dataclass
class _Netns:
    """What this run installed in one namespace (for ``update``)."""

    ifname: str
    label: str | None
    rng_key: str
    specs: dict[str, LinkSpec]                               # dst -> spec in force
    chain: str | None = None                                 # our mangle chain
    queued: set[str] = field(default_factory=set)            # dsts with an NFQUEUE rule
    served: bool = False                                     # the daemon has its queue
    tree: bool = False                                       # our htb root is on ifname
    classes: dict[str, int] = field(default_factory=dict)    # dst -> htb minor


class Impairments:
    """All impairments of one run; use as a context manager."""

    def __init__(self, run_id: str, seed: int = 1, engine: str | None = None,
                 log_dir: Path | None = None) -> None:
        if engine is not None and engine not in ENGINES:
            raise ImpairError(f"engine {engine!r} unknown; use one of {ENGINES} "
                              "or None to detect")
        rules.chain_name(run_id, 999)  # fail early on an over-long run id
        self.run_id = run_id
        self.seed = seed
        self._engine = engine
        self._log_dir = Path(log_dir) if log_dir else Path(tempfile.gettempdir())
        self._daemon: subprocess.Popen[bytes] | None = None
        self._chains: list[tuple[str, str]] = []   # (netns, chain)
        self._trees: list[tuple[str, str]] = []    # (netns, ifname)
        self._applied: set[tuple[int, int]] = set()  # netns (dev, inode)
        self._last_stats: dict = {}
        self._ns: dict[str, _Netns] = {}   # by netns path, for update()
        #: One daemon conversation at a time (the timeline thread updates
        #: links while the main thread may ask for stats).
        self._lock = threading.RLock()
        atexit.register(self.close)

    @property
    def engine(self) -> str:
        if self._engine is None:
            raise ImpairError("engine not chosen yet: call apply() first, or pass "
                              "engine='netem'/'nfqueue' to Impairments()")
        return self._engine

    @property
    def daemon_log(self) -> Path:
        return self._log_dir / f"ttnet-{self.run_id}-nfqueue.log"

    def __enter__(self) -> Impairments:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def apply(self, netns_path: str, ifname: str, egress: dict[str, LinkSpec],
              label: str | None = None,
              later: dict[str, list[LinkSpec]] | None = None) -> str:
        """Impair traffic leaving the namespace per destination IPv4.

        label names the sending ensemble: it keys stats() ("label->dst",
        default "netns_path->dst") and the per-link RNG, so the same seed
        and labels replay the same drops (without a label, apply order is
        used). Returns the engine used. Clean links get no rule. ``later``:
        the specs a link will be given by update() (a fault timeline), so
        whatever they need (rule, daemon link, class) is installed now and
        an update is one quick call. Raises ImpairError on bad input or if
        the kernel refuses; what was installed stays recorded so close()
        removes it.
        """
        _validate(netns_path, egress)
        later = {d: list(specs) for d, specs in (later or {}).items() if d in egress}
        for dst, specs in later.items():
            for spec in specs:
                _validate(netns_path, {dst: spec})
        st = os.stat(netns_path)
        if (st.st_dev, st.st_ino) in self._applied:
            raise ImpairError(f"impairments already applied to netns {netns_path} in "
                              f"run {self.run_id}; pass all its links in one apply()")
        if self._engine is None:
            self._engine = detect_engine(netns_path, ifname)
            log.info("impairment engine: %s", self._engine)
        self._applied.add((st.st_dev, st.st_ino))
        state = self._ns[netns_path] = _Netns(ifname, label,
                                              label or f"#{len(self._applied)}", dict(egress))

        def ever(dst: str, need) -> bool:
            return any(need(s) for s in [egress[dst], *later.get(dst, [])])

        dirty = {d: s for d, s in egress.items()
                 if ever(d, lambda spec: not spec.is_clean)}
        if not dirty:
            return self._engine
        self._trees.append((netns_path, ifname))
        if self._engine == "netem":
            plans = [rate.ClassPlan(minor=i, dst=d, rate_bps=dirty[d].rate_bps,
                                    netem=netem.netem_options(dirty[d]))
                     for i, d in enumerate(sorted(dirty), 1)]
            rate.install_tree(netns_path, ifname, plans)
            state.classes, state.tree = {p.dst: p.minor for p in plans}, True
            return self._engine
        shaped = sorted(d for d in dirty if ever(d, lambda spec: spec.rate_bps is not None))
        rate.install_tree(netns_path, ifname, [
            rate.ClassPlan(minor=i, dst=d, rate_bps=dirty[d].rate_bps)
            for i, d in enumerate(shaped, 1)])
        state.classes = {d: i for i, d in enumerate(shaped, 1)}
        state.tree = bool(shaped)      # install_tree adds no root for no class
        queued = {d: s for d, s in dirty.items() if ever(d, _needs_daemon)}
        if queued:
            self._call({"op": "add", "netns": netns_path, "queue": QUEUE_NUM,
                        "label": label, "rng_key": state.rng_key,
                        "links": {d: _daemon_spec(s) for d, s in queued.items()}})
            state.served = True
            chain = rules.chain_name(self.run_id, len(self._chains))
            self._chains.append((netns_path, chain))
            rules.install(netns_path, chain, QUEUE_NUM, sorted(queued))
            state.chain, state.queued = chain, set(queued)
        return self._engine

    def link(self, netns_path: str, dst: str) -> LinkSpec:
        """The spec in force on the link from the namespace to ``dst``."""
        state = self._ns.get(netns_path)
        if state is None:
            raise ImpairError(f"no impairments applied to {netns_path} in run "
                              f"{self.run_id}; call apply() first")
        return state.specs.get(dst, LinkSpec())

    def update(self, netns_path: str, ifname: str, dst: str, spec: LinkSpec) -> None:
        """Change the link from the namespace to ``dst`` to ``spec`` now,
        in place: packets on other links are undisturbed, the link keeps
        its loss/jitter RNG, packets already delayed keep their release
        time. Raises ImpairError (bad spec, apply() not called, the
        kernel or the daemon refuses)."""
        _validate(netns_path, {dst: spec})
        with self._lock:
            state = self._ns.get(netns_path)
            if state is None:
                raise ImpairError(f"no impairments applied to {netns_path} in run "
                                  f"{self.run_id}; call apply() first")
            if state.ifname != ifname:
                raise ImpairError(f"{netns_path} was impaired on {state.ifname}, "
                                  f"not {ifname}")
            if state.specs.get(dst) == spec:
                return
            if self.engine == "netem":
                self._update_netem(netns_path, state, dst, spec)
            else:
                self._update_nfqueue(netns_path, state, dst, spec)
            state.specs[dst] = spec
            log.info("%s -> %s now %s", state.label or netns_path, dst, spec)

    def _new_class(self, netns_path: str, state: _Netns, dst: str,
                   spec: LinkSpec, with_netem: bool) -> None:
        """An htb class (and netem leaf) for a destination that had none."""
        if not state.tree:
            rate.install_tree(netns_path, state.ifname, [rate.ClassPlan(
                minor=1, dst=dst, rate_bps=spec.rate_bps,
                netem=netem.netem_options(spec) if with_netem else None)])
            self._trees.append((netns_path, state.ifname))
            state.tree = True
            state.classes[dst] = 1
            return
        minor = max(state.classes.values(), default=0) + 1
        _tc_checked(netns_path, rate.class_args("add", state.ifname, minor, spec.rate_bps))
        if with_netem:
            _tc_checked(netns_path, netem.qdisc_args("add", state.ifname, minor, spec))
        _tc_checked(netns_path, rate.filter_args(state.ifname, minor, dst))
        state.classes[dst] = minor

    def _update_netem(self, netns_path: str, state: _Netns, dst: str,
                      spec: LinkSpec) -> None:
        minor = state.classes.get(dst)
        if minor is None:
            self._new_class(netns_path, state, dst, spec, with_netem=True)
            return
        _tc_checked(netns_path, rate.class_args("change", state.ifname, minor, spec.rate_bps))
        _tc_checked(netns_path, netem.qdisc_args("change", state.ifname, minor, spec))

    def _update_nfqueue(self, netns_path: str, state: _Netns, dst: str,
                        spec: LinkSpec) -> None:
        # Delay, jitter, loss, duplicate, corrupt: the daemon's link first,
        # then (if the link had none) the rule that queues its packets.
        if _needs_daemon(spec) or dst in state.queued:
            if state.served:
                self._call({"op": "set", "netns": netns_path, "dst": dst,
                            "spec": _daemon_spec(spec)})
            else:
                self._call({"op": "add", "netns": netns_path, "queue": QUEUE_NUM,
                            "label": state.label, "rng_key": state.rng_key,
                            "links": {dst: _daemon_spec(spec)}})
                state.served = True
            if dst not in state.queued:
                if state.chain is None:
                    chain = rules.chain_name(self.run_id, len(self._chains))
                    rules.install(netns_path, chain, QUEUE_NUM, [dst])
                    self._chains.append((netns_path, chain))
                    state.chain = chain
                else:
                    rules.add_dst(netns_path, state.chain, QUEUE_NUM, dst)
                state.queued.add(dst)
        # The rate: the destination's htb class (unlimited: a class at 10 Gbit/s).
        if dst in state.classes:
            _tc_checked(netns_path, rate.class_args("change", state.ifname,
                                                    state.classes[dst], spec.rate_bps))
        elif spec.rate_bps is not None:
            self._new_class(netns_path, state, dst, spec, with_netem=False)

    def _start_daemon(self) -> subprocess.Popen[bytes]:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        # New session: a terminal Ctrl-C reaches only us; close() then stops
        # the daemon after the rules are gone, releasing held packets.
        self._daemon = subprocess.Popen(
            [sys.executable, str(DAEMON_PATH), "--log", str(self.daemon_log),
             "--seed", str(self.seed), "--dup-mark", hex(rules.DUPLICATE_MARK)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        log.info("nfqueue daemon pid %d, log %s", self._daemon.pid, self.daemon_log)
        return self._daemon

    def _call(self, cmd: dict) -> dict:
        with self._lock:
            return self._call_locked(cmd)

    def _call_locked(self, cmd: dict) -> dict:
        proc = self._daemon or self._start_daemon()
        assert proc.stdin and proc.stdout
        try:
            proc.stdin.write(json.dumps(cmd).encode() + b"\n")
            proc.stdin.flush()
        except BrokenPipeError as exc:
            raise ImpairError(f"nfqueue daemon exited; see {self.daemon_log}") from exc
        ready, _, _ = select.select([proc.stdout], [], [], DAEMON_REPLY_TIMEOUT_S)
        line = proc.stdout.readline() if ready else b""
        if not line:
            raise ImpairError(f"nfqueue daemon did not answer {cmd['op']!r}; "
                              f"see {self.daemon_log}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise ImpairError(f"nfqueue daemon refused {cmd['op']!r}: "
                              f"{reply.get('error')}; see {self.daemon_log}")
        return reply

    def stats(self) -> dict:
        """Per-link packet counters (nfqueue engine) for the run metadata."""
        out: dict = {"engine": self._engine, "links": {}}
        if self._daemon is not None:
            alive = self._daemon.poll() is None
            out["daemon_alive"] = alive
            if alive:
                self._last_stats = self._call({"op": "stats"})
            out["links"] = self._last_stats.get("links", {})
            if "daemon" in self._last_stats:
                out["daemon"] = self._last_stats["daemon"]
        return out

    def close(self) -> None:
        """Remove rules, stop the daemon (releasing held packets), remove qdiscs."""
        errors: list[str] = []
        # Rules first: once they are gone no new packet waits for the daemon.
        while self._chains:
            ns, chain = self._chains.pop()
            try:
                rules.remove(ns, chain)
            except Exception as exc:  # keep going: every step must get its chance
                errors.append(f"rules {chain} in {ns}: {exc}")
        if self._daemon is not None:
            proc, self._daemon = self._daemon, None
            if proc.poll() is None:
                try:
                    self._last_stats = self._call_on(proc, {"op": "stats"})
                    proc.stdin.write(b'{"op": "stop"}\n')
                    proc.stdin.flush()
                except Exception as exc:
                    log.warning("daemon stop request failed: %s", exc)
            try:
                proc.wait(DAEMON_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                errors.append(f"nfqueue daemon {proc.pid} had to be killed")
            for f in (proc.stdin, proc.stdout):
                if f:
                    f.close()
        while self._trees:
            ns, ifname = self._trees.pop()
            try:
                rate.remove_tree(ns, ifname)
            except Exception as exc:
                errors.append(f"qdisc on {ifname} in {ns}: {exc}")
        atexit.unregister(self.close)
        if errors:
            raise ImpairError("cleanup incomplete: " + "; ".join(errors))

    def _call_on(self, proc: subprocess.Popen[bytes], cmd: dict) -> dict:
        saved, self._daemon = self._daemon, proc
        try:
            return self._call(cmd)
        finally:
            self._daemon = saved
