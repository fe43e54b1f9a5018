"""What every run of a topology is told to do, emulated or simulated.

Owns the flow plan (the JSON-able list of flows an agent or the simulator
walks) and run ids. Pure functions of the topology: never reads the clock
except to name a run, never touches the network.
"""
from __future__ import annotations

import time
import uuid

from testbed.spec.model import Topology


def new_run_id() -> str:
    """A results directory name: sortable by start time, unique per run."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]


def flows_plan(topology: Topology) -> list[dict]:
    """The topology's flows as plain dicts, as written into ``plan.json``."""
    return [dict(name=f.name, src=f.src, dst=f.dst, sizes=list(f.sizes), count=f.count,
                 interval_s=f.interval_s, ensure=f.ensure, deadline_s=f.deadline_s,
                 start_s=f.start_s) for f in topology.flows]


def expected_messages(flows: list[dict], dst: str) -> list[tuple[int, str, int, int]]:
    """(flow index, source, message number, size) of every message ``dst``
    should receive: what a receiver's :class:`PayloadMatcher` is built from."""
    return [(fi, f["src"], k, f["sizes"][k % len(f["sizes"])])
            for fi, f in enumerate(flows) if f["dst"] == dst for k in range(f["count"])]


def message_size(flow: dict, k: int) -> int:
    """Size of message ``k`` of a planned flow (sizes repeat in turn)."""
    return flow["sizes"][k % len(flow["sizes"])]
