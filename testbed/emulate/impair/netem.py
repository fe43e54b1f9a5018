"""netem engine: the kernel impairs packets (for kernels that have sch_netem).

Owns the translation of a LinkSpec into netem qdisc options and the plan of
one htb class + netem leaf per impaired destination (installed by
``testbed.emulate.impair.rate``). It never runs a userspace daemon and never touches
iptables: with netem, the kernel does everything.

This machine has no sch_netem, so only the plan is tested here; the plan is
what a kernel with netem receives.
"""
from __future__ import annotations

from typing import Any

from testbed.spec.model import LinkSpec
from testbed.emulate.impair.rate import ROOT_MAJOR, ClassPlan, install_tree

# netem's own queue (packets held while delayed); the kernel default of 1000
# overflows at high rate x delay products, which would look like extra loss.
NETEM_LIMIT = 10_000


def netem_options(spec: LinkSpec) -> dict[str, Any]:
    """pyroute2 netem parameters for one directed link.

    Units follow pyroute2: delay/jitter in microseconds, loss/duplicate/
    prob_corrupt in percent. Rate stays on the parent htb class, so netem's
    own rate option is not used.
    """
    opts: dict[str, Any] = {
        "delay": round(spec.delay_s * 1e6),
        "jitter": round(spec.jitter_s * 1e6),
        "loss": spec.loss * 100.0,
        "duplicate": spec.duplicate * 100.0,
        "limit": NETEM_LIMIT,
    }
    if spec.corrupt:
        opts["prob_corrupt"] = spec.corrupt * 100.0
    return opts


def qdisc_args(op: str, ifname: str, minor: int, spec: LinkSpec) -> list[str]:
    """``tc qdisc add|change`` of the netem leaf under class ``minor`` (the
    leaf install_tree puts there: handle ``7474+minor:``), every option
    given so a change leaves nothing of the old spec behind."""
    def pct(x: float) -> str:
        return f"{x * 100:.6g}%"
    return ["qdisc", op, "dev", ifname, "parent", f"{ROOT_MAJOR:x}:{minor:x}",
            "handle", f"{ROOT_MAJOR + minor:x}:", "netem", "limit", str(NETEM_LIMIT),
            "delay", f"{round(spec.delay_s * 1e6)}us", f"{round(spec.jitter_s * 1e6)}us",
            "loss", pct(spec.loss), "duplicate", pct(spec.duplicate),
            "corrupt", pct(spec.corrupt)]


def plan(egress: dict[str, LinkSpec]) -> list[ClassPlan]:
    """One class + netem leaf per non-clean destination, in a stable order."""
    plans = []
    for minor, dst in enumerate(sorted(d for d, s in egress.items() if not s.is_clean), 1):
        spec = egress[dst]
        plans.append(ClassPlan(minor=minor, dst=dst, rate_bps=spec.rate_bps,
                               netem=netem_options(spec)))
    return plans


def apply(netns_path: str, ifname: str, egress: dict[str, LinkSpec]) -> None:
    """Install the netem tree on ifname in the namespace."""
    install_tree(netns_path, ifname, plan(egress))
