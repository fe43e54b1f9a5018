"""The simpy baseline: the same topology and flows through ttnet's engine.

Owns running a topology in simulated time with ``TTNetworkInterfaceSim`` on
a ``SimNetwork`` built from the topology's directed links, and writing the
same event schema and results layout as an emulated run (``t`` is simulated
seconds from the start). The per-datagram host cost comes from calibration
(see :mod:`testbed.calibrate`) and is recorded in ``meta.json``.

Must never: read the wall clock into results or use unseeded randomness:
same topology + seed + host cost -> identical events.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from testbed.model import Topology
from testbed.payloads import PayloadMatcher, message_bytes
from testbed.run import flows_plan, new_run_id
from testbed.topology import topology_to_yaml


def sim_links(topology: Topology):
    from ttnet import LinkParams

    def conv(spec) -> "LinkParams":
        return LinkParams(delay_s=spec.delay_s, jitter_s=spec.jitter_s, loss=spec.loss,
                          rate_bps=spec.rate_bps, duplicate=spec.duplicate, corrupt=spec.corrupt)
    links = {}
    for a in topology.ensembles:
        for b in topology.ensembles:
            if a != b:
                links[(a, b)] = conv(topology.link(a, b))
    return conv(topology.default_link), links


def simulate_events(topology: Topology, host_cost_s: float = 0.0, seed: int | None = None,
                    engine_overrides: dict | None = None,
                    hop_latency_s: float = 0.0) -> tuple[list[dict], dict]:
    """Run the flows in simulated time; returns (events, counters per ensemble)."""
    import simpy

    from ttnet import (EngineConfig, SimNetwork, TTNetworkInterfaceSim,
                       TTNetworkMessageSim)

    env = simpy.Environment()
    default, links = sim_links(topology)
    seed = topology.seed if seed is None else seed
    net = SimNetwork(env, default, links, seed=seed, host_cost_s=host_cost_s,
                     hop_latency_s=hop_latency_s)
    flows = flows_plan(topology)
    events: list[dict] = []
    ifaces = {}
    for name in topology.ensembles:
        expected = [(fi, f["src"], k, f["sizes"][k % len(f["sizes"])])
                    for fi, f in enumerate(flows) if f["dst"] == name for k in range(f["count"])]
        matcher = PayloadMatcher(expected)

        def on_receive(msg, name=name, matcher=matcher):
            m = matcher.match(msg.address, msg.payload)
            if m is None:
                events.append(dict(event="unknown", src=msg.address, dst=name,
                                   size=len(msg.payload), t=env.now))
                return
            fi, k, intact = m
            f = flows[fi]
            events.append(dict(event="deliver", flow=f["name"], msg=k, src=f["src"], dst=name,
                               size=len(msg.payload), ensure=f["ensure"], t=env.now,
                               intact=intact))
        ifaces[name] = TTNetworkInterfaceSim(env, net, name, receiver_function=on_receive,
                                             config=EngineConfig(**(engine_overrides or {})))

    def sender(fi: int, f: dict):
        iface = ifaces[f["src"]]
        yield env.timeout(f["start_s"])
        for k in range(f["count"]):
            size = f["sizes"][k % len(f["sizes"])]
            base = dict(flow=f["name"], msg=k, src=f["src"], dst=f["dst"], size=size,
                        ensure=f["ensure"])
            events.append(dict(event="send", t=env.now, **base))
            iface.send(TTNetworkMessageSim(f["dst"], message_bytes(fi, k, size)),
                       ensure=f["ensure"], deadline_s=f["deadline_s"],
                       after=lambda base=base: events.append(dict(event="complete", t=env.now, **base)),
                       on_failure=lambda _m, reason, base=base: events.append(
                           dict(event="fail", t=env.now, reason=reason, **base)))
            if k + 1 < f["count"]:
                yield env.timeout(f["interval_s"])

    for fi, f in enumerate(flows):
        env.process(sender(fi, f))
    env.run(until=topology.expected_duration_s() + 5.0)
    counters = {n: i.counters for n, i in ifaces.items()}
    counters["_links"] = {"dropped": net.dropped, "duplicated": net.duplicated,
                          "corrupted": net.corrupted}
    return events, counters


#: Independent simulated replications pooled into one baseline. One
#: emulated run is one sample of a random process (which packets are lost);
#: pooling replications makes the simulated distribution the model's own,
#: not one more noisy sample of it.
REPLICATIONS = 20
#: Replication r's message k is logged as msg r * MSG_STRIDE + k.
MSG_STRIDE = 1_000_000


def run_simulation(topology: Topology, out_dir: Path | None = None,
                   results_root: Path = Path("results"), host_cost_s: float | None = None,
                   seed: int | None = None, engine_overrides: dict | None = None,
                   replications: int = REPLICATIONS, calibration: dict | None = None) -> Path:
    """Simulate and write ``events-sim.jsonl``, ``topology.yaml`` and
    ``meta.json`` into ``out_dir`` (default: a new run directory).
    Replication r uses seed ``seed + r``; all are pooled in the events.
    ``calibration`` (host_cost_s, hop_latency_s) defaults to the one stored
    under ``results_root``."""
    from testbed.calibrate import load_host_cost

    cost_info = calibration or load_host_cost(results_root)
    if host_cost_s is None:
        host_cost_s = cost_info["host_cost_s"]
    else:
        cost_info = {"source": "argument", "host_cost_s": host_cost_s, "hop_latency_s": 0.0}
    hop_latency_s = float(cost_info.get("hop_latency_s", 0.0))
    if out_dir is None:
        out_dir = results_root / topology.name / (new_run_id() + "-sim")
    out_dir.mkdir(parents=True, exist_ok=True)
    base_seed = topology.seed if seed is None else seed
    t0 = time.perf_counter()
    events, counters, last_event = [], {}, 0.0
    for r in range(replications):
        evs, counters[f"replication-{r}"] = simulate_events(topology, host_cost_s, base_seed + r,
                                                            engine_overrides, hop_latency_s)
        last_event += max((e["t"] for e in evs), default=0.0)
        for e in evs:
            if "msg" in e:
                e["msg"] += r * MSG_STRIDE
            e["replication"] = r
        events += evs
    wall = time.perf_counter() - t0
    sim_span = (topology.expected_duration_s() + 5.0) * replications
    with open(out_dir / "events-sim.jsonl", "w") as f:
        for e in events:
            f.write(json.dumps(e, separators=(",", ":")) + "\n")
    (out_dir / "topology.yaml").write_text(topology_to_yaml(topology))
    meta = {"kind": "simulated", "topology": topology.name, "backend": "sim",
            "seed": base_seed, "replications": replications, "host_cost_s": host_cost_s,
            "hop_latency_s": hop_latency_s,
            "host_cost": cost_info, "wall_s": round(wall, 3),
            "simulated_s": round(last_event, 3),
            "speedup": round(last_event / wall, 1) if wall > 0 else None,
            "speedup_span": round(sim_span / wall, 1) if wall > 0 else None,
            "counters": counters}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    return out_dir
