"""Packet captures of an emulated run: one pcap per ensemble.

Owns ``<run dir>/capture/``: ``<ensemble>.pcap`` (the UDP datagrams to and
from that ensemble's address, as seen on its interface ``host.ifname``)
and ``<ensemble>.log`` (tcpdump's own messages and its final counts).

``Capture.start(hosts)`` starts one tcpdump per host -- this machine's
tcpdump, inside the host's network namespace (``nsenter --net=PATH``;
for docker, the container's namespace), so the capture does not die with
the container's agent and is stopped by the run -- and returns once every
one is listening. ``Capture.stop()`` ends them with SIGINT (tcpdump then
flushes and closes the file: a complete pcap) and returns their counts
(``complete``; ``ended``: stopped, or the interface went first -- on docker
a container's interface is removed when its agent exits, and tcpdump then
closes the file just as cleanly); SIGTERM/SIGKILL only if one does not exit. ``run_emulation`` starts it
after the impairments and before any agent, and stops it in its
``finally``, so a failed or interrupted run still leaves complete files.

What a capture shows (both impairment engines): packets *leaving* a host
are seen after its link's impairments, because netem's qdisc and the
NFQUEUE rule (mangle OUTPUT; the daemon re-injects the packet after its
delay) both sit before the point where the interface hands packets to
packet sockets. So in the sender's pcap a packet appears at its release
time (delay and jitter already spent), a dropped packet does not appear
at all, a corrupted one appears with its flipped bit (a bad CRC), a
duplicate appears twice. The receiver's pcap shows what arrived. When a
message was handed to ttnet is in the events files, not in the pcaps.

Must never: capture anything but the run's own hosts, or outlive the run
(each tcpdump also runs under ``timeout``, a bound for a crashed parent).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

CAPTURE_DIR = "capture"
#: How long one tcpdump may take to open its interface.
START_TIMEOUT_S = 15.0
#: How long one tcpdump may take to flush and exit after SIGINT.
STOP_TIMEOUT_S = 10.0
#: A capture ends by itself this long after it started even if nobody stops
#: it (the run's process died); longer than any run.
MAX_LIFETIME_S = 6 * 3600
#: What tcpdump says when its interface is removed under it (it then
#: closes the file properly and exits 1).
GONE = "The interface disappeared"
_COUNT = re.compile(r"^(\d+) packets? (captured|received by filter|dropped by kernel)", re.M)


class CaptureError(RuntimeError):
    """A capture could not be started; the message says what to fix."""


def capture_filter(ip: str) -> str:
    """The BPF filter of one host's capture: UDP to or from its address."""
    return f"udp and host {ip}"


class Capture:
    """tcpdump in every host of a run, writing ``run_dir/capture/<name>.pcap``."""

    def __init__(self, run_dir: Path, max_lifetime_s: float = MAX_LIFETIME_S) -> None:
        self.dir = Path(run_dir) / CAPTURE_DIR
        self.max_lifetime_s = max_lifetime_s
        self._procs: dict[str, subprocess.Popen] = {}
        self._stats: dict[str, dict] = {}

    def pcap(self, name: str) -> Path:
        return self.dir / f"{name}.pcap"

    def _log(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def command(self, host) -> list[str]:
        """The argv that captures ``host`` (a ``backends.Host``)."""
        return ["timeout", "-s", "INT", "-k", "10", str(int(self.max_lifetime_s)),
                "nsenter", f"--net={host.netns_path}",
                "tcpdump", "-i", host.ifname, "-n", "-p", "-U", "--immediate-mode",
                # tcpdump drops to user tcpdump by default, which may not write
                # into the run directory; -Z root keeps the opening user.
                "-Z", "root", "-w", str(self.pcap(host.name)), capture_filter(host.ip)]

    def start(self, hosts: dict) -> None:
        """Start one capture per host and wait until each is listening.
        Raises CaptureError (after stopping those already started)."""
        for tool, package in (("tcpdump", "tcpdump"), ("nsenter", "util-linux"),
                              ("timeout", "coreutils")):
            if shutil.which(tool) is None:
                raise CaptureError(f"capture needs {tool}; install the Debian package "
                                   f"{package} (scripts/install-deps.sh does)")
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            for name, host in hosts.items():
                with self._log(name).open("wb") as err:
                    # Own session: a Ctrl-C at the terminal reaches the run,
                    # which stops the captures in order, not tcpdump directly.
                    self._procs[name] = subprocess.Popen(
                        self.command(host), stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
            self._await_listening()
        except BaseException:
            self.stop()
            raise
        log.info("capturing %d hosts into %s", len(self._procs), self.dir)

    def _await_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        waiting = set(self._procs)
        while waiting:
            for name in sorted(waiting):
                text = self._log(name).read_text(errors="replace")
                if "listening on" in text:
                    waiting.discard(name)
                elif self._procs[name].poll() is not None:
                    raise CaptureError(f"tcpdump for {name!r} exited with "
                                       f"{self._procs[name].returncode}: {text.strip()[-500:]}")
            if waiting and time.monotonic() > deadline:
                raise CaptureError(f"tcpdump for {sorted(waiting)} not listening after "
                                   f"{START_TIMEOUT_S:.0f} s")
            if waiting:
                time.sleep(0.02)

    def stop(self) -> dict[str, dict]:
        """SIGINT every capture, wait for it to close its file; returns per
        ensemble the pcap path and tcpdump's counts. Idempotent."""
        live = {n: p for n, p in self._procs.items() if p.poll() is None}
        for p in live.values():
            _signal(p, signal.SIGINT)      # `timeout` passes it on to tcpdump
        end = time.monotonic() + STOP_TIMEOUT_S
        for name, p in live.items():
            try:
                p.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("tcpdump for %s ignored SIGINT; killing it", name)
                _killpg(p, signal.SIGTERM)
                try:
                    p.wait(2)
                except subprocess.TimeoutExpired:
                    _killpg(p, signal.SIGKILL)
                    p.wait()
        for name, p in self._procs.items():
            if name in self._stats:
                continue
            try:
                text = self._log(name).read_text(errors="replace")
            except OSError:
                text = ""
            counts = {what.replace(" ", "_"): int(n) for n, what in _COUNT.findall(text)}
            # docker: a container's interface goes when its agent exits, so
            # its capture may have ended then, the file closed properly.
            gone = GONE in text
            self._stats[name] = {"pcap": str(self.pcap(name)), "exit_code": p.returncode,
                                 "complete": p.returncode == 0 or gone,
                                 "ended": "interface gone (its host stopped first)" if gone
                                 else "stopped" if p.returncode == 0
                                 else f"tcpdump exited with {p.returncode}",
                                 **counts}
        return dict(self._stats)

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal(p: subprocess.Popen, sig: int) -> None:
    try:
        p.send_signal(sig)
    except ProcessLookupError:
        pass


def _killpg(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass
