"""iptables rules that hand a namespace's egress packets to the verdict daemon.

Owns one chain per (run, namespace) in the ``mangle`` table of that
namespace, jumped to from OUTPUT, with one NFQUEUE rule per impaired
destination. The host's iptables runs under ``nsenter --net=PATH`` so the
namespace (e.g. a container) needs no iptables binary of its own.

No ``--queue-bypass``: if the daemon dies during a run, impaired traffic is
dropped (fail closed, visible as 100 % loss) rather than silently passing
unimpaired. close() removes the rules, so nothing stays blocked afterwards.

It never touches the filter/nat tables, other chains, or the host namespace.
"""
from __future__ import annotations

import logging
import subprocess

from testbed.emulate.impair.rate import ImpairError, u32_dst_key

#: Packets the NFQUEUE daemon re-injects (duplicates) carry this fwmark; the
#: rules skip marked packets so a copy is not queued (and impaired) twice.
#: The daemon is told it with ``--dup-mark``.
DUPLICATE_MARK = 0x7474

log = logging.getLogger("ttnet.impair.rules")

TABLE = "mangle"
CHAIN_MAX = 28  # iptables chain name limit (29 with the terminating NUL)


def run_in_netns(netns_path: str, argv: list[str], check: bool = True
                 ) -> subprocess.CompletedProcess[str]:
    """Run a host binary inside the namespace's network namespace only."""
    cmd = ["nsenter", f"--net={netns_path}", *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise ImpairError(f"{' '.join(cmd)} failed ({proc.returncode}): "
                          f"{proc.stderr.strip()}")
    return proc


def chain_name(run_id: str, index: int) -> str:
    name = f"ttnet-{run_id}-{index}"
    if len(name) > CHAIN_MAX:
        raise ImpairError(f"run id {run_id!r} is too long for an iptables chain "
                          f"name ({name!r} > {CHAIN_MAX} chars); use a shorter run id")
    return name


def install(netns_path: str, chain: str, queue_num: int, dsts: list[str]) -> None:
    """Create chain, one NFQUEUE rule per dst, then the OUTPUT jump (last,
    so no packet is queued before every rule is in place)."""
    ipt = ["iptables", "-w", "-t", TABLE]
    run_in_netns(netns_path, [*ipt, "-N", chain])
    try:
        for dst in dsts:
            run_in_netns(netns_path, [*ipt, *_queue_rule(chain, queue_num, dst)])
        run_in_netns(netns_path, [*ipt, "-A", "OUTPUT", "-j", chain])
    except Exception:
        remove(netns_path, chain)
        raise
    log.info("%s: chain %s queues %s to %d", netns_path, chain, dsts, queue_num)


def _queue_rule(chain: str, queue_num: int, dst: str) -> list[str]:
    u32_dst_key(dst)  # validates dst as IPv4 with a clear message
    return ["-A", chain, "-d", f"{dst}/32", "-m", "mark", "!", "--mark", hex(DUPLICATE_MARK),
            "-j", "NFQUEUE", "--queue-num", str(queue_num)]


def add_dst(netns_path: str, chain: str, queue_num: int, dst: str) -> None:
    """Queue packets to one more destination in an installed chain (a link
    that was clean when the run started and is impaired now)."""
    run_in_netns(netns_path, ["iptables", "-w", "-t", TABLE,
                              *_queue_rule(chain, queue_num, dst)])
    log.info("%s: chain %s now also queues %s", netns_path, chain, dst)


def remove(netns_path: str, chain: str) -> None:
    """Remove the jump, flush and delete the chain; missing pieces are fine."""
    ipt = ["iptables", "-w", "-t", TABLE]
    # The jump may have been added more than once only by a bug; loop bounded.
    for _ in range(8):
        if run_in_netns(netns_path, [*ipt, "-D", "OUTPUT", "-j", chain],
                        check=False).returncode != 0:
            break
    run_in_netns(netns_path, [*ipt, "-F", chain], check=False)
    run_in_netns(netns_path, [*ipt, "-X", chain], check=False)


def list_rules(netns_path: str) -> str:
    """``iptables -S`` of the mangle table in the namespace (for checks)."""
    return run_in_netns(netns_path, ["iptables", "-w", "-t", TABLE, "-S"]).stdout
