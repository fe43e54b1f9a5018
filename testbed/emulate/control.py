"""Changing a held ``up`` from another process (``testbed set``).

Owns a control directory in the run directory of ``testbed up``
(``<run_dir>/control/``) and its protocol, plain files so nothing depends
on socket path lengths or permissions:

- ``up.json``: written by the ``up`` process when it starts holding:
  ``{"pid", "topology", "ensembles", "started"}``; removed when it stops.
  A client trusts it only while that pid is alive. Clients find the run
  directory of a live ``up`` the way ``exec`` does
  (:func:`testbed.emulate.access.find_up`).
- ``req-<client pid>-<n>.json``: a request, written atomically by a client
  (:func:`request`): ``{"op": "set", "link": "a->b", "set": {"delay":
  "80ms"}}``, link fields as a topology file writes them.
- ``resp-<same>.json``: the answer, written atomically by ``up``
  (:meth:`ControlServer.poll`): ``{"ok": true, "links": {...}}`` or
  ``{"ok": false, "error": "..."}``; the client removes it.

The ``set`` handler (:func:`link_setter`) lays the fields over each named
directed link's spec in force and hands the result to the running
impairment engine (``Impairments.update``), exactly as the fault timeline
does.

Must never: act on a request for another run, or leave the control
directory behind a stopped ``up``.
"""
from __future__ import annotations

import itertools
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from testbed.spec.jsonio import read_json, write_json_atomic
from testbed.spec.timeline import describe_event
from testbed.spec.topology import TopologyError, link_change

log = logging.getLogger(__name__)

CONTROL_DIR = "control"
UP_FILE = "up.json"
#: How often a holding ``up`` looks for requests.
POLL_S = 0.1
#: How long a client waits for the answer.
REPLY_TIMEOUT_S = 15.0

Handler = Callable[[dict], dict]


class ControlError(RuntimeError):
    """No live ``up`` to talk to, or it did not answer."""


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ControlServer:
    """The ``up`` side: announce, then answer requests on each poll()."""

    def __init__(self, run_dir: Path, handler: Handler, info: dict | None = None) -> None:
        self.dir = Path(run_dir) / CONTROL_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.handler = handler
        write_json_atomic(self.dir / UP_FILE, {"pid": os.getpid(), "started": time.time(),
                                               **(info or {})})

    def poll(self) -> int:
        """Answer every waiting request; returns how many."""
        served = 0
        for req in sorted(self.dir.glob("req-*.json")):
            resp = self.dir / ("resp-" + req.name[4:])
            try:
                request = read_json(req)
                reply = self.handler(request) if isinstance(request, dict) else \
                    {"ok": False, "error": "a request is a JSON object"}
            except Exception as exc:
                log.exception("control request %s failed", req.name)
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            write_json_atomic(resp, reply)
            req.unlink(missing_ok=True)
            served += 1
        return served

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


_counter = itertools.count()


def request(run_dir: Path, body: dict, timeout_s: float = REPLY_TIMEOUT_S) -> dict:
    """Send ``body`` to the ``up`` holding ``run_dir`` and return its reply.
    Raises ControlError when none is live there or it does not answer."""
    ctl = Path(run_dir) / CONTROL_DIR
    try:
        info = read_json(ctl / UP_FILE)
    except (OSError, ValueError):
        raise ControlError(f"no `testbed up` is holding {run_dir}") from None
    pid = info.get("pid") if isinstance(info, dict) else None
    if not _alive(pid):
        raise ControlError(f"the `testbed up` of {run_dir} (pid {pid}) is gone")
    name = f"{os.getpid()}-{time.monotonic_ns()}-{next(_counter)}.json"
    req, resp = ctl / f"req-{name}", ctl / f"resp-{name}"
    write_json_atomic(req, body)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if resp.exists():
            reply = read_json(resp)
            resp.unlink(missing_ok=True)
            return reply if isinstance(reply, dict) else {"ok": False, "error": repr(reply)}
        if not _alive(pid):
            break
        time.sleep(0.02)
    req.unlink(missing_ok=True)
    raise ControlError(f"the `testbed up` of {run_dir} (pid {pid}) did not answer "
                       f"within {timeout_s:.0f} s")


def link_setter(topology: Any, hosts: dict[str, Any], impair: Any) -> Handler:
    """The handler of ``{"op": "set", "link": ..., "set": {...}}`` for an
    ``up`` of ``topology`` on ``hosts`` impaired by ``impair``."""
    from testbed.spec.model import LinkEvent

    def current(src: str, dst: str):
        return impair.link(hosts[src].netns_path, hosts[dst].ip)

    def handle(req: dict) -> dict:
        if req.get("op") != "set":
            return {"ok": False, "error": f"unknown op {req.get('op')!r}"}
        link, props = req.get("link"), req.get("set")
        if not isinstance(link, str) or not isinstance(props, dict) or not props:
            return {"ok": False, "error": "a set request has link: 'a->b' and set: {...}"}
        try:
            changes = link_change(tuple(topology.ensembles), link, props, current)
        except TopologyError as exc:
            return {"ok": False, "error": str(exc)}
        done = {}
        for (src, dst), spec in changes.items():
            a, b = hosts[src], hosts[dst]
            impair.update(a.netns_path, a.ifname, b.ip, spec)
            fields = tuple((k, getattr(spec, k)) for k in
                           ("delay_s", "jitter_s", "loss", "rate_bps", "duplicate", "corrupt"))
            done[f"{src}->{dst}"] = describe_event(LinkEvent(0.0, src, dst, fields))
        log.info("set: %s", done)
        return {"ok": True, "links": done}

    return handle
