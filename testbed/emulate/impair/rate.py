"""Per-destination egress tree on one interface: htb classes + u32 dst filters.

Owns the root qdisc of an ensemble's egress interface inside its namespace:
an htb root (handle ``7474:``) whose default is "direct" (unclassified
traffic passes unshaped), one class per impaired destination with its rate,
and a u32 filter on the IPv4 destination. The netem engine hangs a netem
qdisc under each class; the nfqueue engine uses only the rate classes.

It never touches iptables, never touches another interface, and only ever
deletes the root qdisc if that root is the one it installed (handle 7474:).
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import os
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.protocols import ETH_P_IP

log = logging.getLogger("ttnet.impair.rate")

ROOT_MAJOR = 0x7474  # "tt": makes our root findable and distinguishable
ROOT_HANDLE = ROOT_MAJOR << 16
# A class without its own rate (netem-only link) must not shape: 10 Gbit/s
# is far above what a veth on this class of machine moves.
UNLIMITED_BPS = 10_000_000_000
FILTER_PRIO = 1


class ImpairError(RuntimeError):
    """Impairments could not be applied (bad input or kernel refusal)."""


@dataclass(frozen=True)
class ClassPlan:
    """One destination's htb class (``7474:minor``) and optional netem leaf."""

    minor: int
    dst: str
    rate_bps: float | None
    netem: dict[str, Any] | None = None

    @property
    def classid(self) -> int:
        return ROOT_HANDLE | self.minor


def u32_dst_key(dst: str) -> str:
    """The u32 key matching IPv4 destination ``dst`` (header offset 16)."""
    try:
        ip = ipaddress.IPv4Address(dst)
    except ValueError as exc:
        raise ImpairError(f"destination {dst!r} is not an IPv4 address; "
                          "egress keys must be dotted-quad IPv4 strings") from exc
    return f"0x{int(ip):08x}/0xffffffff+16"


def open_iproute(netns_path: str) -> IPRoute:
    """An IPRoute whose netlink socket lives in the namespace at netns_path."""
    # pyroute2 treats a bare name as /var/run/netns/NAME, and by default
    # (flags=O_CREAT) *creates* a missing namespace: a cleanup after the
    # namespace is gone would resurrect an empty one. flags=0 never creates.
    if "/" not in netns_path:
        raise ImpairError(f"netns path {netns_path!r} must be a path such as "
                          "/run/netns/NAME or /proc/PID/ns/net")
    if not os.path.exists(netns_path):
        raise FileNotFoundError(f"netns {netns_path} does not exist")
    return IPRoute(netns=netns_path, flags=0)


def link_index(ipr: IPRoute, ifname: str, netns_path: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise ImpairError(f"interface {ifname!r} not found in netns {netns_path}; "
                          "pass the ensemble's egress interface name (e.g. eth0)")
    return found[0]


def install_tree(netns_path: str, ifname: str, plans: list[ClassPlan]) -> None:
    """Install the htb root, one class per plan, netem leaves, dst filters."""
    if not plans:
        return
    with open_iproute(netns_path) as ipr:
        idx = link_index(ipr, ifname, netns_path)
        try:
            # default=0: unclassified packets are sent directly, unshaped.
            ipr.tc("add", "htb", idx, handle=ROOT_HANDLE, default=0)
        except NetlinkError as exc:
            raise ImpairError(
                f"cannot add htb root on {ifname} in {netns_path}: {exc}; "
                "another root qdisc is present - remove it or call close() "
                "on the Impairments that installed it") from exc
        for plan in plans:
            rate = plan.rate_bps if plan.rate_bps is not None else UNLIMITED_BPS
            ipr.tc("add-class", "htb", idx, handle=plan.classid,
                   parent=ROOT_HANDLE, rate=f"{int(rate)}bit", ceil=f"{int(rate)}bit")
            if plan.netem is not None:
                ipr.tc("add", "netem", idx, parent=plan.classid,
                       handle=(ROOT_MAJOR + plan.minor) << 16, **plan.netem)
            ipr.tc("add-filter", "u32", idx, parent=ROOT_HANDLE, prio=FILTER_PRIO,
                   protocol=ETH_P_IP, target=plan.classid, keys=[u32_dst_key(plan.dst)])
            log.info("%s %s: class %x for %s rate=%s netem=%s", netns_path, ifname,
                     plan.classid, plan.dst, plan.rate_bps, plan.netem)


# --- live changes: ``tc`` argument lists (run by testbed.emulate.impair._tc) ---

def _classid(minor: int) -> str:
    return f"{ROOT_MAJOR:x}:{minor:x}"


def class_args(op: str, ifname: str, minor: int, rate_bps: float | None) -> list[str]:
    """``tc class add|change`` of one destination's htb class (None: unlimited)."""
    rate = f"{int(rate_bps if rate_bps is not None else UNLIMITED_BPS)}bit"
    return ["class", op, "dev", ifname, "parent", f"{ROOT_MAJOR:x}:", "classid",
            _classid(minor), "htb", "rate", rate, "ceil", rate]


def filter_args(ifname: str, minor: int, dst: str) -> list[str]:
    """``tc filter add``: packets to ``dst`` go to class ``minor``."""
    u32_dst_key(dst)
    return ["filter", "add", "dev", ifname, "parent", f"{ROOT_MAJOR:x}:", "protocol", "ip",
            "prio", str(FILTER_PRIO), "u32", "match", "ip", "dst", f"{dst}/32",
            "flowid", _classid(minor)]


def remove_tree(netns_path: str, ifname: str) -> bool:
    """Delete our root qdisc (and with it classes, filters, leaves).

    Returns True if something was removed. A vanished namespace or
    interface counts as already clean.
    """
    try:
        ipr = open_iproute(netns_path)
    except (OSError, NetlinkError):
        return False
    with ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return False
        idx = found[0]
        for q in ipr.get_qdiscs(index=idx):
            if q["handle"] == ROOT_HANDLE and q["parent"] == 0xFFFFFFFF:
                try:
                    ipr.tc("del", "htb", idx, handle=ROOT_HANDLE, parent=0xFFFFFFFF)
                except NetlinkError as exc:
                    if exc.code not in (errno.ENOENT, errno.EINVAL):
                        raise
                return True
    return False


def has_our_root(netns_path: str, ifname: str) -> bool:
    """True if our htb root is on ifname (used by tests and close checks)."""
    with open_iproute(netns_path) as ipr:
        idx = link_index(ipr, ifname, netns_path)
        return any(q["handle"] == ROOT_HANDLE for q in ipr.get_qdiscs(index=idx))
