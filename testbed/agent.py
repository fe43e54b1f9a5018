"""The program each ensemble runs in the testbed (inside a container or netns).

Owns one ensemble's part of a run: bind a ``TTNetwork`` over UDP, wait for
the host's go signal (routes and a common start time), send the flows this
ensemble sources on schedule, and log one JSON line per message event into
the shared results directory. It exits when every ensemble reports its
flows finished, or at the run's end time -- whichever comes first.

Stdlib + ttnet only: the image has nothing else. Must never: run longer
than the end time the host gave it, or send anywhere but its routes.

Files in the results directory (all written by the host unless noted):
  plan.json            flows, ensembles, port, auth key (before start)
  go.json              routes {name: "ip:port"}, start_at, end_at (epoch s)
  ready-<name>         agent: socket bound, waiting for go   (agent)
  events-<name>.jsonl  agent: send/deliver/complete/fail events (agent)
  done-<name>          agent: own flows all resolved          (agent)
  counters-<name>.json agent: ttnet counters at exit          (agent)
"""
from __future__ import annotations

import argparse
import heapq
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ttnet import (EngineConfig, TTNetwork, TTNetworkInterfaceType,
                   TTNetworkMessageUDP)
from testbed.payloads import PayloadMatcher, message_bytes

log = logging.getLogger("testbed.agent")

#: How long an agent waits for the host's go signal before giving up.
GO_TIMEOUT_S = 180.0
#: After everyone is done, keep answering late duplicates for a moment so
#: a peer's last ACK isn't lost to a closed port.
LINGER_S = 0.5


class EventLog:
    def __init__(self, path: Path) -> None:
        self._f = open(path, "a", buffering=1 << 16)
        self._lock = threading.Lock()

    def write(self, **event: Any) -> None:
        line = json.dumps(event, separators=(",", ":"))
        with self._lock:
            self._f.write(line + "\n")

    def close(self) -> None:
        with self._lock:
            self._f.close()


def _wait_for(path: Path, deadline: float) -> bool:
    while time.time() < deadline:
        if path.exists():
            return True
        time.sleep(0.02)
    return False


def _read_json(path: Path) -> dict:
    # go.json is written to a temp name and renamed by the host: atomic.
    return json.loads(path.read_text())


def run(name: str, results: Path) -> int:
    plan = _read_json(results / "plan.json")
    port = int(plan["port"])
    flows = plan["flows"]
    events = EventLog(results / f"events-{name}.jsonl")
    expected = [(fi, f["src"], k, f["sizes"][k % len(f["sizes"])])
                for fi, f in enumerate(flows) if f["dst"] == name for k in range(f["count"])]
    matcher = PayloadMatcher(expected)
    routes_by_addr: dict[tuple[str, int], str] = {}
    cfg = EngineConfig(**plan.get("engine", {}))

    def on_receive(msg: Any) -> None:
        t = time.time()
        src = routes_by_addr.get(tuple(msg.address), f"{msg.address[0]}:{msg.address[1]}")
        m = matcher.match(src, msg.payload)
        if m is None:
            events.write(event="unknown", src=src, dst=name, size=len(msg.payload), t=t)
            return
        fi, k, intact = m
        f = flows[fi]
        events.write(event="deliver", flow=f["name"], msg=k, src=f["src"], dst=name,
                     size=len(msg.payload), ensure=f["ensure"], t=t, intact=intact)

    net = TTNetwork(name, TTNetworkInterfaceType.UDP_IP, ip_addr="0.0.0.0", port=port,
                    receiver_function=on_receive, config=cfg,
                    auth_key=plan.get("auth_key"))
    try:
        (results / f"ready-{name}").touch()
        if not _wait_for(results / "go.json", time.time() + GO_TIMEOUT_S):
            log.error("%s: no go.json within %.0fs", name, GO_TIMEOUT_S)
            return 2
        go = _read_json(results / "go.json")
        for peer, addr in go["routes"].items():
            if peer != name:
                net.add_route(peer, addr)
                ip, p = addr.split(":")
                routes_by_addr[(ip, int(p))] = peer
        start_at, end_at = float(go["start_at"]), float(go["end_at"])
        mine = [(fi, f) for fi, f in enumerate(flows) if f["src"] == name]
        _send_flows(net, mine, events, start_at, end_at)
        (results / f"done-{name}").touch()
        everyone = [f"done-{e}" for e in plan["ensembles"]]
        while time.time() < end_at and not all((results / d).exists() for d in everyone):
            time.sleep(0.05)
        time.sleep(LINGER_S)
        (results / f"counters-{name}.json").write_text(json.dumps(net.counters, sort_keys=True))
        return 0
    finally:
        net.close()
        events.close()


def _send_flows(net: TTNetwork, mine: list[tuple[int, dict]], events: EventLog,
                start_at: float, end_at: float) -> None:
    """Send every message of this ensemble's flows on schedule (one thread,
    a heap of due times), then wait until each is completed or failed."""
    due: list[tuple[float, int, int]] = []
    for fi, f in mine:
        for k in range(f["count"]):
            heapq.heappush(due, (start_at + f["start_s"] + k * f["interval_s"], fi, k))
    outstanding = threading.Semaphore(0)
    flows = dict(mine)

    def resolved(f: dict, k: int, size: int, ok: bool, reason: str | None = None) -> None:
        ev = dict(flow=f["name"], msg=k, src=f["src"], dst=f["dst"], size=size,
                  ensure=f["ensure"], t=time.time())
        if ok:
            events.write(event="complete", **ev)
        else:
            events.write(event="fail", reason=reason, **ev)
        outstanding.release()

    while due:
        when, fi, k = heapq.heappop(due)
        now = time.time()
        if now >= end_at:
            break
        if when > now:
            time.sleep(when - now)
        f = flows[fi]
        size = f["sizes"][k % len(f["sizes"])]
        payload = message_bytes(fi, k, size)
        ip, port = net.get_recipient_address(f["dst"])
        msg = TTNetworkMessageUDP(ip, port, payload)
        events.write(event="send", flow=f["name"], msg=k, src=f["src"], dst=f["dst"],
                     size=size, ensure=f["ensure"], t=time.time())
        net.send_message(
            msg, ensure=f["ensure"], deadline_s=f["deadline_s"],
            after=lambda f=f, k=k, size=size: resolved(f, k, size, True),
            on_failure=lambda _m, reason, f=f, k=k, size=size: resolved(f, k, size, False, reason))
    sent = len([1 for fi, f in mine for _ in range(f["count"])]) - len(due)
    for _ in range(sent):
        if not outstanding.acquire(timeout=max(0.0, end_at - time.time())):
            log.warning("run ended with sends unresolved")
            return


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="ttnet testbed agent (one ensemble)")
    ap.add_argument("--name", required=True)
    ap.add_argument("--results", required=True, type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {args.name} %(levelname)s %(message)s")
    try:
        return run(args.name, args.results)
    except Exception:
        log.exception("agent %s crashed", args.name)
        return 1


if __name__ == "__main__":
    sys.exit(main())
