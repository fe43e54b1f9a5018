"""The simpy baseline: the same topology and flows through ttnet's engine.

Owns running a topology in simulated time with ``TTNetworkInterfaceSim`` on
a ``SimNetwork`` built from the topology's directed links, and writing the
same event schema and results layout as an emulated run (``t`` is simulated
seconds from the start). A fault timeline (``topology.events``) is applied
at its times, as :func:`testbed.spec.timeline.steps` reads it, by the same
rules as in emulation: link changes with ``SimNetwork.set_link``, pause,
resume, kill and restart on the ensemble's simulated interface (a paused
ensemble's flows and app wait; a killed one's stop; a restarted one gets a
fresh engine, its flows send what is planned from the restart on and its
app starts again from scratch). The per-datagram host cost comes from calibration
(see :mod:`testbed.pipelines.calibrate`) and is recorded in ``meta.json``.

Must never: read the wall clock into results or use unseeded randomness:
same topology + seed + host cost -> identical events.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from testbed.simulate.host import HostModel, load_calibration
from testbed.spec.app import AppRuntime, load_app, pack_apps
from testbed.spec.events import (Complete, Deliver, Fail, MessageRef, Send, Unknown,
                                 write_records)
from testbed.spec.model import Topology
from testbed.spec.payloads import PayloadMatcher, message_bytes
from testbed.spec.plan import expected_messages, flows_plan, new_run_id
from testbed.spec.timeline import first_due_from
from testbed.spec.topology import topology_to_yaml


log = logging.getLogger(__name__)


class SentMatcher(PayloadMatcher):
    """A :class:`PayloadMatcher` that checks a delivered payload against
    the bytes the simulated sender sent (``sent``: (flow index, msg) ->
    payload, each taken at its first match) instead of generating them
    again: the same answers, without seeding an RNG per delivery. A payload
    not in ``sent`` (delivered again, or a corrupted header) is matched as
    PayloadMatcher does."""

    def __init__(self, expected, sent: dict[tuple[int, int], bytes]) -> None:
        super().__init__(expected)
        self._sent = sent

    def _reference(self, fi: int, msg: int, size: int) -> bytes:
        sent = self._sent.pop((fi, msg), None)     # == message_bytes(fi, msg, size)
        return sent if sent is not None else super()._reference(fi, msg, size)


class SimApp(AppRuntime):
    """An app over the simulated interface, on simulated time (testbed.spec.app)."""

    def __init__(self, env, iface, **kw) -> None:
        super().__init__(**kw)
        self.env, self.iface = env, iface
        #: The interface's incarnation this app runs in: a restart ends it
        #: (its timers no longer fire) and starts a fresh app.
        self.incarnation = iface.incarnation

    def clock(self) -> float:
        return self.env.now

    def event_time(self) -> float:
        return self.env.now

    def schedule(self, delay: float, fn) -> None:
        def fire(_event) -> None:
            if self.iface.incarnation != self.incarnation:
                return                             # died in a restart
            if self.iface.state == "running":
                fn()
            elif self.iface.state == "paused":     # a paused process runs nothing
                self.iface.when_running().callbacks.append(fire)
        self.env.timeout(delay).callbacks.append(fire)

    def transmit(self, to: str, payload: bytes, ensure: bool, deadline: float | None,
                 done) -> None:
        from ttnet import TTNetworkMessageSim
        self.iface.send(TTNetworkMessageSim(to, payload), ensure=ensure, deadline_s=deadline,
                        after=lambda _msg: done(True, None),
                        on_failure=lambda _m, reason: done(False, reason))


def simulate_host(topology: Topology, host: HostModel, seed: int | None = None,
                  engine_overrides: dict | None = None) -> tuple[list[dict], dict]:
    """``simulate_events`` with a host model."""
    return simulate_events(topology, host.host_cost_s, seed, engine_overrides,
                           host.hop_latency_s, host.hop_noise_s, cpu_limits=host.cpu_limits,
                           emulator_cost_s=host.emulator_cost_s, cores=host.cores)


def model_version() -> str:
    """Hash of the code that decides simulated results (the protocol engine,
    the simulated links, this module): a cached simulation made by other
    code is not reused."""
    import ttnet
    h = hashlib.sha256()
    here = Path(__file__)
    spec = here.parent.parent / "spec"
    for path in sorted(Path(ttnet.__file__).parent.glob("*.py")) + [
            here, here.with_name("host.py"), spec / "payloads.py", spec / "events.py",
            spec / "plan.py", spec / "app.py", spec / "timeline.py"]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def link_params(spec):
    """A topology's LinkSpec as ttnet's LinkParams."""
    from ttnet import LinkParams
    return LinkParams(delay_s=spec.delay_s, jitter_s=spec.jitter_s, loss=spec.loss,
                      rate_bps=spec.rate_bps, duplicate=spec.duplicate, corrupt=spec.corrupt)


def run_timeline(env, net, ifaces: dict, topology: Topology, on_restart=None):
    """A simpy process: the topology's events at their simulated times.
    ``on_restart(name)`` runs right after an ensemble's restart."""
    from testbed.spec.timeline import steps
    for step in steps(topology):
        if step.at_s > env.now:
            yield env.timeout(step.at_s - env.now)
        for (src, dst), spec in step.links.items():
            net.set_link(src, dst, link_params(spec))
        if step.action is not None:
            name, action = step.action
            getattr(ifaces[name], action)()
            if action == "restart" and on_restart is not None:
                on_restart(name)


def topology_cpu_limits(topology: Topology) -> dict[str, float]:
    """Each ensemble's ``cpus:`` (SimNetwork's ``cpu_limits``: a quota of
    cpus x 100 ms of CPU per 100 ms period, as Docker enforces it; a host
    that handles one datagram at a time never reaches a quota of a core or
    more, so cpus >= 1 changes nothing)."""
    return {name: s.cpus for name, s in topology.limits.items() if s.cpus is not None}


def sim_links(topology: Topology):
    conv = link_params
    links = {}
    for a in topology.ensembles:
        for b in topology.ensembles:
            if a != b:
                links[(a, b)] = conv(topology.link(a, b))
    return conv(topology.default_link), links


def simulate_events(topology: Topology, host_cost_s: float = 0.0, seed: int | None = None,
                    engine_overrides: dict | None = None,
                    hop_latency_s: float = 0.0,
                    hop_noise_s: tuple[float, ...] = (),
                    cpu_limits: bool = True,
                    emulator_cost_s: float = 0.0,
                    cores: int | None = None) -> tuple[list[dict], dict]:
    """Run the flows in simulated time; returns (events, counters per ensemble).
    ``cpu_limits``: throttle ensembles with ``cpus:`` as docker does (False:
    as on netns, where the limits are not applied); ``emulator_cost_s``:
    the impairment emulator's CPU per packet, ``cores``: the emulating
    machine's cores, shared by every host and the emulator (see ``SimNetwork``)."""
    import simpy

    from ttnet import (EngineConfig, SimNetwork, TTNetworkInterfaceSim,
                       TTNetworkMessageSim)
    from ttnet.sim import run_until

    env = simpy.Environment()
    default, links = sim_links(topology)
    seed = topology.seed if seed is None else seed
    net = SimNetwork(env, default, links, seed=seed, host_cost_s=host_cost_s,
                     hop_latency_s=hop_latency_s, hop_noise_s=hop_noise_s,
                     cpu_limits=topology_cpu_limits(topology) if cpu_limits else None,
                     emulator_cost_s=emulator_cost_s, cores=cores)
    flows = flows_plan(topology)
    # one EngineConfig for every host: the topology's settings (as the
    # agents get them), then the caller's overrides (power tests' mutations)
    engine_config = EngineConfig(**{**topology.engine_settings(), **(engine_overrides or {})})
    events: list[dict] = []
    ifaces = {}
    apps: dict[str, SimApp] = {}
    sent: dict[tuple[int, int], bytes] = {}     # what each sender sent, until matched
    refs: dict[tuple[int, int], MessageRef] = {}    # and its MessageRef, until delivered

    def payload_of(fi: int, ref: MessageRef) -> bytes:
        refs[(fi, ref.msg)] = ref
        payload = sent[(fi, ref.msg)] = message_bytes(fi, ref.msg, ref.size)
        return payload

    for name in topology.ensembles:
        matcher = SentMatcher(expected_messages(flows, name), sent)

        def on_receive(msg, name=name, matcher=matcher):
            app = apps.get(name)
            if app is not None and app.deliver(msg.address, msg.payload):
                return
            m = matcher.match(msg.address, msg.payload)
            if m is None:
                events.append(Unknown(msg.address, name, len(msg.payload), env.now).record())
                return
            fi, k, intact = m
            ref = refs.pop((fi, k), None) or MessageRef.planned(flows[fi], k)
            events.append(Deliver(ref, size=len(msg.payload),
                                  t=env.now, intact=intact).record())
        ifaces[name] = TTNetworkInterfaceSim(env, net, name, receiver_function=on_receive,
                                             config=engine_config)

    restarted_at: dict[str, float] = {}

    def sender(fi: int, f: dict):
        iface = ifaces[f["src"]]
        yield env.timeout(f["start_s"])
        due = env.now       # message k's planned time; a pause makes sends late
        incarnation, k = iface.incarnation, 0
        while k < f["count"]:
            if iface.state != "running":
                yield iface.when_running()      # a resume, or a restart (if any)
            if iface.incarnation != incarnation:
                # Restarted since the last send: what fell due before the
                # restart went down with the old agent (the emulated agent
                # counts it not sent); the fresh one sends from then on.
                incarnation = iface.incarnation
                k = max(k, first_due_from(f, restarted_at[f["src"]]))
                if k >= f["count"]:
                    return
                due = f["start_s"] + k * f["interval_s"]
                if due > env.now:
                    yield env.timeout(due - env.now)
                    continue                    # paused or restarted again meanwhile?
            ref = MessageRef.planned(f, k)
            events.append(Send(ref, env.now).record())
            iface.send(TTNetworkMessageSim(f["dst"], payload_of(fi, ref)),
                       ensure=f["ensure"], deadline_s=f["deadline_s"],
                       after=lambda _msg, ref=ref: events.append(Complete(ref, env.now).record()),
                       on_failure=lambda _m, reason, ref=ref: events.append(
                           Fail(ref, env.now, reason).record()))
            k += 1
            if k < f["count"]:
                on_time = env.now == due
                due += f["interval_s"]
                # Late after a pause: the overdue messages go at once, as
                # the agent's schedule (absolute times) sends them.
                yield env.timeout(f["interval_s"] if on_time else max(0.0, due - env.now))

    def start_app(name: str) -> None:
        conf = topology.apps[name]
        main = load_app(topology.base_dir or ".", conf.app_path or "", conf.app_function)
        app = apps[name] = SimApp(env, ifaces[name], name=name, peers=topology.ensembles,
                                  duration=topology.duration_s or 0.0, emit=events.append,
                                  seed=seed)
        app.start(main)

    def on_restart(name: str) -> None:
        # A reboot: the flows resume from now (sender), an app runs again
        # from scratch (its clock still counts from the experiment start).
        restarted_at[name] = env.now
        if name in topology.apps:
            start_app(name)

    for fi, f in enumerate(flows):
        env.process(sender(fi, f))
    if topology.events:
        env.process(run_timeline(env, net, ifaces, topology, on_restart))
    for name in topology.apps:
        start_app(name)
    run_until(env, topology.expected_duration_s() + 5.0)
    counters = {n: i.counters for n, i in ifaces.items()}
    for name, app in apps.items():
        counters[name]["app_errors"] = app.errors
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


def replicate(topology: Topology, host: HostModel, seeds: range | list[int],
              engine_overrides: dict | None = None
              ) -> Iterator[tuple[int, list[dict], dict]]:
    """(r, events, counters) for replication r = 0, 1, ... with seed
    ``seeds[r]``: each message k logged as ``r * MSG_STRIDE + k`` and each
    record tagged ``replication=r``, so replications can be pooled."""
    for r, seed in enumerate(seeds):
        events, counters = simulate_host(topology, host, seed, engine_overrides)
        for e in events:
            if "msg" in e:
                e["msg"] += r * MSG_STRIDE
            e["replication"] = r
        yield r, events, counters


def run_simulation(topology: Topology, out_dir: Path | None = None,
                   results_root: Path = Path("results"), host_cost_s: float | None = None,
                   seed: int | None = None, engine_overrides: dict | None = None,
                   replications: int = REPLICATIONS, calibration: dict | None = None,
                   host: HostModel | None = None, cpu_limits: bool | None = None) -> Path:
    """Simulate and write ``events-sim.jsonl``, ``topology.yaml`` and
    ``meta.json`` into ``out_dir`` (default: a new run directory).
    Replication r uses seed ``seed + r``; all are pooled in the events.
    The host model is ``host``, else built from ``calibration``, else from
    the calibration stored under ``results_root``; ``host_cost_s``
    overrides its per-datagram cost, ``cpu_limits`` whether ``cpus:`` is
    enforced (default: the host model's, True unless set from a netns run)."""
    if host is None:
        host = HostModel.from_calibration(calibration or load_calibration(results_root))
    if host_cost_s is not None:
        host = replace(host, host_cost_s=host_cost_s, source="argument",
                       info={"host_cost_s": host_cost_s})
    if cpu_limits is not None:
        host = replace(host, cpu_limits=cpu_limits)
    host_cost_s, hop_latency_s = host.host_cost_s, host.hop_latency_s
    if out_dir is None:
        out_dir = results_root / topology.name / (new_run_id() + "-sim")
    out_dir.mkdir(parents=True, exist_ok=True)
    base_seed = topology.seed if seed is None else seed
    t0 = time.perf_counter()
    events, counters, last_event = [], {}, 0.0
    seeds = range(base_seed, base_seed + replications)
    for r, evs, counts in replicate(topology, host, seeds, engine_overrides):
        counters[f"replication-{r}"] = counts
        last_event += max((e["t"] for e in evs), default=0.0)
        events += evs
    wall = time.perf_counter() - t0
    sim_span = (topology.expected_duration_s() + 5.0) * replications
    write_records(out_dir / "events-sim.jsonl", events)
    (out_dir / "topology.yaml").write_text(topology_to_yaml(pack_apps(topology, out_dir)))
    meta = {"kind": "simulated", "topology": topology.name, "backend": "sim",
            "seed": base_seed, "replications": replications, "host_cost_s": host_cost_s,
            "hop_latency_s": hop_latency_s, "host_model": host.key(),
            "cpu_limits": topology_cpu_limits(topology) if host.cpu_limits else {},
            "model_version": model_version(), "engine_overrides": engine_overrides or {},
            "host_cost": host.info or {"source": host.source}, "wall_s": round(wall, 3),
            "simulated_s": round(last_event, 3),
            "speedup": round(last_event / wall, 1) if wall > 0 else None,
            "speedup_span": round(sim_span / wall, 1) if wall > 0 else None,
            "counters": counters}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    return out_dir
