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

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from testbed.model import Topology
from testbed.payloads import PayloadMatcher, message_bytes
from testbed.run import flows_plan
from testbed.topology import topology_to_yaml


log = logging.getLogger(__name__)

CALIBRATION_NAME = "calibration.json"
#: Used when no calibration exists: roughly what the UDP stack alone costs
#: per datagram on a 2-core VM (measured once here; recalibrate!).
DEFAULT_HOST_COST_S = 40e-6


@dataclass(frozen=True)
class HostModel:
    """What the emulating host adds to every datagram beyond the link:
    ``host_cost_s`` of CPU on each side (serialised per host: it limits bulk
    transfers), ``hop_latency_s`` of latency that occupies no CPU (thread
    wake-ups, the NFQUEUE pass), and ``hop_noise_s``, the spread around it
    (quantiles of a per-datagram draw, median 0). Fitted by
    ``testbed.calibrate``; ``source`` says where it came from."""

    host_cost_s: float = DEFAULT_HOST_COST_S
    hop_latency_s: float = 0.0
    hop_noise_s: tuple[float, ...] = ()
    source: str = "default"
    info: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not (self.host_cost_s >= 0 and self.hop_latency_s >= 0):
            raise ValueError(f"host model needs host_cost_s >= 0 and hop_latency_s >= 0, "
                             f"got {self.host_cost_s!r}, {self.hop_latency_s!r}")

    @classmethod
    def from_calibration(cls, info: dict | None) -> "HostModel":
        if not info:
            return cls()
        return cls(float(info["host_cost_s"]), float(info.get("hop_latency_s", 0.0)),
                   tuple(float(x) for x in info.get("hop_noise_s", ())),
                   str(info.get("source", "calibrated")), dict(info))

    def key(self) -> dict:
        """What identifies this model in a cached simulation."""
        return {"host_cost_s": self.host_cost_s, "hop_latency_s": self.hop_latency_s,
                "hop_noise_s": list(self.hop_noise_s), "source": self.source}


def simulate_host(topology: Topology, host: HostModel, seed: int | None = None,
                  engine_overrides: dict | None = None) -> tuple[list[dict], dict]:
    """``simulate_events`` with a host model."""
    return simulate_events(topology, host.host_cost_s, seed, engine_overrides,
                           host.hop_latency_s, host.hop_noise_s)


def load_calibration(results_root: Path = Path("results")) -> dict | None:
    """The calibration stored under ``results_root``, or None."""
    path = Path(results_root) / CALIBRATION_NAME
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text())
        float(info["host_cost_s"])
        return info
    except (ValueError, KeyError, TypeError):
        log.warning("%s is unreadable; using the default host model", path)
        return None


def model_version() -> str:
    """Hash of the code that decides simulated results (the protocol engine,
    the simulated links, this module): a cached simulation made by other
    code is not reused."""
    import ttnet
    h = hashlib.sha256()
    here = Path(__file__)
    for path in sorted(Path(ttnet.__file__).parent.glob("*.py")) + [
            here, here.with_name("payloads.py")]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


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
                    hop_latency_s: float = 0.0,
                    hop_noise_s: tuple[float, ...] = ()) -> tuple[list[dict], dict]:
    """Run the flows in simulated time; returns (events, counters per ensemble)."""
    import simpy

    from ttnet import (EngineConfig, SimNetwork, TTNetworkInterfaceSim,
                       TTNetworkMessageSim)

    env = simpy.Environment()
    default, links = sim_links(topology)
    seed = topology.seed if seed is None else seed
    net = SimNetwork(env, default, links, seed=seed, host_cost_s=host_cost_s,
                     hop_latency_s=hop_latency_s, hop_noise_s=hop_noise_s)
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
                   replications: int = REPLICATIONS, calibration: dict | None = None,
                   host: HostModel | None = None) -> Path:
    """Simulate and write ``events-sim.jsonl``, ``topology.yaml`` and
    ``meta.json`` into ``out_dir`` (default: a new run directory).
    Replication r uses seed ``seed + r``; all are pooled in the events.
    The host model is ``host``, else built from ``calibration``, else from
    the calibration stored under ``results_root``; ``host_cost_s``
    overrides its per-datagram cost."""
    if host is None:
        host = HostModel.from_calibration(calibration or load_calibration(results_root))
    if host_cost_s is not None:
        host = HostModel(host_cost_s, host.hop_latency_s, host.hop_noise_s,
                         "argument", {"host_cost_s": host_cost_s})
    host_cost_s, hop_latency_s = host.host_cost_s, host.hop_latency_s
    if out_dir is None:
        from testbed.run import new_run_id
        out_dir = results_root / topology.name / (new_run_id() + "-sim")
    out_dir.mkdir(parents=True, exist_ok=True)
    base_seed = topology.seed if seed is None else seed
    t0 = time.perf_counter()
    events, counters, last_event = [], {}, 0.0
    for r in range(replications):
        evs, counters[f"replication-{r}"] = simulate_host(topology, host, base_seed + r,
                                                          engine_overrides)
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
            "hop_latency_s": hop_latency_s, "host_model": host.key(),
            "model_version": model_version(), "engine_overrides": engine_overrides or {},
            "host_cost": host.info or {"source": host.source}, "wall_s": round(wall, 3),
            "simulated_s": round(last_event, 3),
            "speedup": round(last_event / wall, 1) if wall > 0 else None,
            "speedup_span": round(sim_span / wall, 1) if wall > 0 else None,
            "counters": counters}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    return out_dir
