"""The contract every host backend keeps: hosts on one bridge, one command each.

Owns: ``Host``, ``Backend`` (the ABC), the start gate shared by both
backends, and the registry of live backends torn down at interpreter exit.

Must never: apply link impairments (that is ``testbed.emulate.impair``, which uses
``Host.netns_path``), or know about agents and flows.
"""
from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import signal
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from testbed.spec.model import Topology

log = logging.getLogger(__name__)

# Container names and our netns/iface names are built from ensemble names.
_ENSEMBLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# How long a gated command waits for the go signal before giving up; bounds
# every process we start even if the caller dies between up() and the go.
GATE_TIMEOUT_S = 600
# How long up() waits for every command to be resolved and parked at the gate.
READY_TIMEOUT_S = 60
CTL_DIR = ".ttnet"  # inside run_dir: ready-<name> files and the go file

# Runs in the host's python3 before the real command: fail fast (exit 127) if
# the program is missing, report ready, wait for the go file, then exec. So
# up() can see a bad command, and all commands start together after the
# caller's before_start hook (impairments) has run.
_GATE_SCRIPT = (
    "import os,shutil,sys,time\n"
    "ctl,name,argv=sys.argv[1],sys.argv[2],sys.argv[3:]\n"
    "prog=shutil.which(argv[0])\n"
    "if prog is None: sys.stderr.write('ttnet: command not found: %s\\n'%argv[0]); sys.exit(127)\n"
    "open(os.path.join(ctl,'ready-'+name),'w').close()\n"
    f"end=time.monotonic()+{GATE_TIMEOUT_S}\n"
    "while not os.path.exists(os.path.join(ctl,'go')):\n"
    " if time.monotonic()>end: sys.stderr.write('ttnet: start gate timed out\\n'); sys.exit(124)\n"
    " time.sleep(0.02)\n"
    "os.execv(prog,argv)\n"
)


class BackendError(RuntimeError):
    """A backend could not create or run its hosts; the message says why."""


@dataclass(frozen=True)
class Host:
    name: str          # ensemble name
    ip: str            # IPv4 on the run's bridge
    netns_path: str    # for setns()/`nsenter --net=`
    ifname: str        # the host's interface on the bridge, inside its netns
    results_dir: str   # the run directory as seen by the process inside the host


CommandFn = Callable[[Host], list[str]]
HostsHook = Callable[[dict[str, Host]], None]


def gated(argv: list[str], ctl_dir: str, name: str, python: str = "python3") -> list[str]:
    """argv wrapped so it starts only once ctl_dir/go exists (see _GATE_SCRIPT)."""
    if not argv or not all(isinstance(a, str) for a in argv):
        raise BackendError(f"command for {name!r} must be a non-empty list of str, got {argv!r}")
    return [python, "-c", _GATE_SCRIPT, ctl_dir, name, *argv]


def validate_topology(topology: Topology) -> None:
    if not topology.ensembles:
        raise BackendError(f"topology {topology.name!r} has no ensembles; add at least one")
    for e in topology.ensembles:
        if not _ENSEMBLE_NAME.match(e):
            raise BackendError(f"ensemble name {e!r} cannot name a host; use letters, digits, "
                               "'_', '.', '-' (max 63, starting with a letter or digit)")
    if len(set(topology.ensembles)) != len(topology.ensembles):
        raise BackendError(f"topology {topology.name!r} lists an ensemble twice")


_live: "weakref.WeakSet[Backend]" = weakref.WeakSet()
_live_lock = threading.Lock()


@atexit.register
def _down_all() -> None:
    with _live_lock:
        backends = list(_live)
    for b in backends:
        try:
            b.down()
        except Exception:  # at exit, keep tearing the others down
            log.exception("teardown of %s run %s at exit failed", b.name, b.run_id)


class Backend(ABC):
    """Creates one host per ensemble on a fresh bridge and runs a command in each.

    Use as a context manager (``__exit__`` calls ``down()``). A failed or
    interrupted ``up()`` tears down what it made and re-raises.
    """

    name: str = "?"
    #: "ip:port" of a clock reference (:mod:`testbed.guest.clock`) on this
    #: host's kernel clock, set by up() of a backend whose hosts may run on
    #: other machines (swarm); None: every host shares this host's kernel
    #: clock (docker, netns), so nothing needs measuring.
    clock_reference: str | None = None

    def __init__(self, run_id: str) -> None:
        # Resource names and the stale sweep parse the id back: 6 hex chars.
        if not re.fullmatch(r"[0-9a-f]{6}", run_id):
            raise BackendError(f"run id {run_id!r} must be 6 lowercase hex chars; "
                               "omit it to get testbed.emulate.net.new_net_tag()")
        self.run_id = run_id
        self._used = False
        self.hosts: dict[str, Host] = {}
        self._logs: dict[str, str] = {}
        self._old_sigterm = None
        #: Restarts still to come by host (expect_restarts) and how many
        #: were done: wait() takes a host's exit for its last only when
        #: none is due, and waits again for the fresh command after one.
        self._restart_lock = threading.Lock()
        self._restarts_due: Counter[str] = Counter()
        self._restarts_done: Counter[str] = Counter()
        with _live_lock:
            _live.add(self)

    def up(self, topology: Topology, run_dir: Path, command: CommandFn,
           before_start: HostsHook | None = None) -> dict[str, Host]:
        """Create the hosts and start ``command(host)`` in each; return hosts by ensemble.

        ``command`` returns an argv; an argv[0] of ``python3`` means the
        backend's python (the image's, or sys.executable for netns).
        ``run_dir`` is visible inside every host at ``host.results_dir``.
        If ``before_start`` is given, every host exists (its netns usable)
        when it is called, and no command has started yet: the place to
        apply impairments. Commands start right after it returns.
        """
        if self._used:
            raise BackendError(f"{self.name} backend run {self.run_id} was already up; "
                               "make a new backend for each run")
        validate_topology(topology)
        self._used = True
        run_dir = Path(run_dir).resolve()
        ctl = run_dir / CTL_DIR
        shutil.rmtree(ctl, ignore_errors=True)
        ctl.mkdir(parents=True)
        try:
            self.hosts = self._up(topology, run_dir, command)
            self._await_ready(ctl)
            if before_start is not None:
                before_start(dict(self.hosts))
            (ctl / "go").touch()
            return dict(self.hosts)
        except BaseException:
            log.warning("%s run %s: up failed, tearing down", self.name, self.run_id)
            self.down()
            raise

    def _await_ready(self, ctl: Path) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        waiting = set(self.hosts)
        while waiting:
            waiting = {n for n in waiting if not (ctl / f"ready-{n}").exists()}
            if not waiting:
                return
            exited = {n: c for n, c in self._poll().items() if c is not None and n in waiting}
            if exited:
                n, code = next(iter(sorted(exited.items())))
                raise BackendError(f"command of {n!r} exited with {code} before starting:\n"
                                   f"{self._read_logs(n)[-2000:]}")
            if time.monotonic() > deadline:
                raise BackendError(f"hosts {sorted(waiting)} not ready after {READY_TIMEOUT_S} s")
            time.sleep(0.05)

    def share_dir(self, path: str) -> str:
        """Make the host directory ``path`` readable inside every host (call
        before up()); returns where the hosts see it. Namespaces share the
        file system, so by default it is ``path`` itself."""
        return str(Path(path).resolve())

    def logs(self, name: str) -> str:
        """stdout+stderr of that host's command (also readable after down())."""
        if name not in self.hosts and name not in self._logs:
            raise KeyError(f"no host {name!r} in run {self.run_id}; hosts: {sorted(self.hosts)}")
        if name in self._logs:
            return self._logs[name]
        return self._read_logs(name)

    def __enter__(self) -> "Backend":
        # SIGTERM (e.g. `timeout`, systemd) would otherwise skip every finally.
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._old_sigterm = signal.signal(signal.SIGTERM, raise_interrupt)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.down()
        finally:
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)
                self._old_sigterm = None

    @abstractmethod
    def _up(self, topology: Topology, run_dir: Path, command: CommandFn) -> dict[str, Host]:
        """Create everything and start each gated command (see gated());
        return only when every host's netns_path is valid."""

    @abstractmethod
    def _poll(self) -> dict[str, int | None]:
        """Exit code per ensemble, None while running."""

    @abstractmethod
    def wait(self, timeout_s: float) -> dict[str, int]:
        """Exit code per ensemble; what still runs at the timeout is killed (code -9)."""

    @abstractmethod
    def _read_logs(self, name: str) -> str: ...

    @abstractmethod
    def down(self) -> None:
        """Remove everything of this run; idempotent; keeps logs readable."""

    # --- the fault timeline's ensemble actions (testbed.emulate.timeline) ---

    def pause(self, name: str) -> None:
        """Freeze every process of host ``name`` (its sockets keep queueing
        what arrives) until resume()."""
        raise BackendError(f"the {self.name} backend cannot pause an ensemble")

    def resume(self, name: str) -> None:
        """Undo pause()."""
        raise BackendError(f"the {self.name} backend cannot resume an ensemble")

    def kill(self, name: str) -> None:
        """SIGKILL every process of host ``name`` (its command's exit code
        is then that of a killed process); the host's network stays."""
        raise BackendError(f"the {self.name} backend cannot kill an ensemble")

    def restart(self, name: str) -> None:
        """A reboot of host ``name``: SIGKILL its command (and whatever it
        started) if it still runs, and start the same command again at
        once in the same host -- same address, same network namespace
        (impairments stay), output appended to its log, no start gate
        wait (the go signal was given). The host's exit code is then the
        fresh command's: wait() waits for it."""
        try:
            self._restart(name)
        finally:
            with self._restart_lock:
                if self._restarts_due[name] > 0:
                    self._restarts_due[name] -= 1
                self._restarts_done[name] += 1

    def _restart(self, name: str) -> None:
        raise BackendError(f"the {self.name} backend cannot restart an ensemble")

    def expect_restarts(self, due: dict[str, int]) -> None:
        """The restarts still to come, by host (the fault timeline's, from
        its start; empty when it stops): while one is due for a host whose
        command exited (killed, waiting for its reboot), wait() keeps
        waiting for it."""
        with self._restart_lock:
            self._restarts_due = Counter({n: c for n, c in due.items() if c > 0})

    def _restart_due(self, name: str | None = None) -> bool:
        """A restart is due for ``name`` (None: for any host)."""
        with self._restart_lock:
            return bool(self._restarts_due[name] if name else +self._restarts_due)


_MAIN_PID = os.getpid()


def raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    """SIGTERM handler: tear down like Ctrl-C (every ``finally`` runs).

    Only in the process that installed it: a forked helper (pyroute2 forks
    one per network namespace it enters, and stops it with SIGTERM) inherits
    the handler, and must simply die rather than unwind a copy of our stack."""
    if os.getpid() != _MAIN_PID:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise KeyboardInterrupt(f"signal {signum}")
