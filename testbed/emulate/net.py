"""Choosing and claiming an IPv4 subnet and a run id for one testbed run.

Owns: the run registry under ``/run/ttnet/runs`` (one JSON claim per live
run: backend, subnet, owner pid) and the choice of a free /24 inside
``POOL``. A subnet is free when no host route or address overlaps it, no
docker network uses it, and no live run has claimed it (netns bridges carry
no host address, so only the claim shows they are in use).

Must never: touch interfaces, namespaces or containers; it only reads them.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# A private /16 unlikely to collide with docker's defaults (172.17+/16,
# 192.168.x) or common LANs; each run takes one /24 of it.
POOL = ipaddress.IPv4Network("10.210.0.0/16")
PREFIX = 24
RUNS_DIR = Path("/run/ttnet/runs")
PREFIX_NAME = "ttnet"


class SubnetError(RuntimeError):
    """No free subnet, or a bad request for one."""


@dataclass(frozen=True)
class RunClaim:
    run_id: str
    backend: str
    subnet: str
    pid: int

    @property
    def owner_alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def new_net_tag() -> str:
    """A fresh tag for one testbed's kernel objects (bridge, veths, netns): 6 hex chars: short enough that 'tt' + id + index fits a 15-char ifname."""
    return secrets.token_hex(3)


def _ip_json(*args: str) -> list[dict]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


def host_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network in this namespace's main routes and addresses."""
    nets: list[ipaddress.IPv4Network] = []
    for r in _ip_json("-4", "route", "show", "table", "all"):
        dst = r.get("dst", "")
        if dst and dst != "default":
            try:
                nets.append(ipaddress.IPv4Network(dst, strict=False))
            except ValueError:
                continue
    for link in _ip_json("-4", "addr"):
        for a in link.get("addr_info", []):
            nets.append(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
    return nets


def docker_networks(client=None) -> list[ipaddress.IPv4Network]:
    """Subnets of all docker networks; empty if the engine does not answer."""
    try:
        if client is None:
            import docker
            client = docker.from_env(timeout=10)
        nets = []
        for n in client.api.networks():
            for cfg in (n.get("IPAM") or {}).get("Config") or []:
                if "Subnet" in cfg and ":" not in cfg["Subnet"]:
                    nets.append(ipaddress.IPv4Network(cfg["Subnet"], strict=False))
        return nets
    except Exception as e:  # no engine is a normal case for the netns backend
        log.debug("docker networks not readable: %s", e)
        return []


def claims() -> list[RunClaim]:
    out = []
    for f in sorted(RUNS_DIR.glob("*.json")):
        try:
            out.append(RunClaim(**json.loads(f.read_text())))
        except (ValueError, TypeError, OSError):
            log.warning("ignoring unreadable run claim %s", f)
    return out


def claim_subnet(run_id: str, backend: str, client=None) -> ipaddress.IPv4Network:
    """Pick a free /24 in POOL and record it for run_id; release with release_run()."""
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    used = host_networks() + docker_networks(client)
    used += [ipaddress.IPv4Network(c.subnet) for c in claims() if c.owner_alive]
    candidates = list(POOL.subnets(new_prefix=PREFIX))
    # Start at a run-dependent offset so concurrent runs rarely race for one /24.
    start = int(run_id, 16) % len(candidates) if run_id else 0
    for k in range(len(candidates)):
        net = candidates[(start + k) % len(candidates)]
        if any(net.overlaps(u) for u in used):
            continue
        lock = RUNS_DIR / f"subnet-{net.network_address}.lock"
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if _lock_owner_alive(lock):
                continue
            lock.unlink(missing_ok=True)  # a dead run's lock; take it over
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                continue
        os.write(fd, run_id.encode())
        os.close(fd)
        claim = RunClaim(run_id, backend, str(net), os.getpid())
        (RUNS_DIR / f"{run_id}.json").write_text(json.dumps(claim.__dict__))
        log.info("run %s: subnet %s", run_id, net)
        return net
    raise SubnetError(f"no free /{PREFIX} left in {POOL}; remove leftovers with "
                      "testbed.emulate.backends.cleanup_stale() or free a subnet")


def _lock_owner_alive(lock: Path) -> bool:
    try:
        rid = lock.read_text().strip()
    except OSError:
        return False
    return any(c.run_id == rid and c.owner_alive for c in claims())


def release_run(run_id: str) -> None:
    """Forget run_id's claim and subnet lock (idempotent)."""
    f = RUNS_DIR / f"{run_id}.json"
    try:
        subnet = json.loads(f.read_text())["subnet"]
        net = ipaddress.IPv4Network(subnet)
        (RUNS_DIR / f"subnet-{net.network_address}.lock").unlink(missing_ok=True)
    except (OSError, ValueError, KeyError):
        pass
    f.unlink(missing_ok=True)


def host_addresses(subnet: ipaddress.IPv4Network, count: int) -> list[str]:
    """count addresses for ensembles: .2 upward (.1 is the bridge gateway)."""
    hosts = list(subnet.hosts())[1:]
    if count > len(hosts):
        raise SubnetError(f"{count} ensembles do not fit in {subnet} ({len(hosts)} addresses); "
                          "split the topology")
    return [str(h) for h in hosts[:count]]
