"""One emulated run of a topology: hosts -> impairments -> agents -> results.

Owns the order of a run and its results directory
``results/<topology>/<run-id>/``: ``topology.yaml`` (the validated model),
``plan.json`` and ``go.json`` (what agents read), ``events-*.jsonl`` (what
agents wrote), ``meta.json`` (backend, impairment engine, versions, kernel,
timings, agent exit codes, counters and outcomes -- what became of each
ensemble's own messages, see :mod:`testbed.guest.agent`; ``clocks``: each
ensemble's clock against this host's, see :mod:`testbed.spec.clocks` --
measured by the agents against the backend's clock reference where it has
one (swarm), else "one kernel", offsets 0 by construction; with a fault
timeline, ``start_at`` and ``events_applied``: each event with the time it
was applied, see :mod:`testbed.emulate.timeline`), ``restart-<name>.json``
(the last restart of an ensemble the timeline restarts) and ``logs/``.

Exit codes with a fault timeline: a killed ensemble's is that of a killed
process (so the run is not ``ok``: its messages' fate is unknown); a
restarted ensemble's is its last agent's, which does not count the
messages due while it was down (see :mod:`testbed.guest.agent`).

While flows run, an optional ``monitor`` gets a
:class:`~testbed.emulate.progress.RunProgress` snapshot about every
MONITOR_INTERVAL_S (see :mod:`testbed.emulate.progress`); it only watches.

Must never: leave a container, network, namespace, iptables rule or
process behind -- on success, failure or Ctrl-C, ``down`` runs. Nor let a
monitor change how long the run waits or what it returns.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from testbed.emulate.progress import RunProgress, RunWatcher, watch
from testbed.spec import clocks
from testbed.spec.app import pack_apps
from testbed.spec.jsonio import write_json_atomic
from testbed.spec.model import Topology
from testbed.spec.plan import flows_plan, new_run_id
from testbed.spec.topology import topology_to_yaml

log = logging.getLogger(__name__)

AGENT_PORT = 8225            # TTPython's default receive port
#: Where a ``run:`` program binds (TTNET_BIND); the agent keeps AGENT_PORT.
PROGRAM_PORT = 8226
#: Agents must be bound and waiting within this long after their hosts start.
READY_TIMEOUT_S = 60.0
#: Head start between the go signal and the first send, so every agent has
#: read go.json before traffic starts.
START_DELAY_S = 0.5
#: Extra time past the topology's last deadline before agents give up.
END_GRACE_S = 5.0
#: Before the flows start, wait at most QUIET_MAX_S for this machine to use
#: less than QUIET_BUSY_CORES (measured over QUIET_SAMPLE_S): a previous
#: run's teardown goes on after it returns (the kernel frees its network
#: namespaces in the background; measured: 0.95 of 2 cores during the
#: flows of a pair run started right after a mesh-20 run) and would
#: compete with this run's flows.
QUIET_MAX_S = 10.0
QUIET_BUSY_CORES = 0.3
QUIET_SAMPLE_S = 0.5

Progress = Callable[[str], None]
#: Called with a snapshot about every MONITOR_INTERVAL_S while flows run,
#: then once with ``done=True``; see :mod:`testbed.emulate.progress`.
Monitor = Callable[[RunProgress], None]


@dataclass
class RunResult:
    run_dir: Path
    meta: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every agent exited 0 (see :mod:`testbed.guest.agent` for the codes)."""
        return all(code == 0 for code in self.meta.get("exit_codes", {}).values())

    @property
    def ensure_failures(self) -> int:
        """ensure=True messages that failed, were unresolved at the end time
        or were never sent, over all ensembles. An agent that left no
        outcome counts every ensure=True message it sources."""
        return sum(int(o.get("ensure_failures", 0))
                   for o in self.meta.get("outcomes", {}).values())


def machine_cpu(stat: Path = Path("/proc/stat")) -> dict | None:
    """This machine's CPU time so far, in seconds over all cores, from
    /proc/stat's first line: ``busy`` (user, nice, system, irq, softirq),
    ``steal`` (taken by the hypervisor), ``idle`` (idle and iowait), with a
    monotonic timestamp ``t``. Two of them around the flows say how busy
    the whole machine was, the run's own processes and everything else.
    None where /proc/stat cannot be read (not Linux)."""
    try:
        fields = stat.read_text().splitlines()[0].split()
        user, nice, system, idle, iowait, irq, softirq, steal = (
            int(v) for v in fields[1:9])
    except (OSError, IndexError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    return {"t": time.monotonic(), "busy": (user + nice + system + irq + softirq) / hz,
            "steal": steal / hz, "idle": (idle + iowait) / hz}


def cores_between(start: dict | None, end: dict | None) -> dict | None:
    """How busy the machine was between two :func:`machine_cpu` snapshots:
    ``wall_s`` and, in CPU seconds per second of wall time, ``busy_cores``
    and ``steal_cores``. None when either is missing or no time passed."""
    if not start or not end or end["t"] <= start["t"]:
        return None
    wall = end["t"] - start["t"]
    return {"wall_s": wall, "busy_cores": (end["busy"] - start["busy"]) / wall,
            "steal_cores": (end["steal"] - start["steal"]) / wall}


def wait_for_quiet(max_s: float = QUIET_MAX_S, busy_cores: float = QUIET_BUSY_CORES,
                   sample_s: float = QUIET_SAMPLE_S, read=machine_cpu,
                   sleep=time.sleep) -> dict:
    """Wait until this machine's CPU use (busy plus steal, over ``sample_s``)
    is under ``busy_cores``, for at most about ``max_s``. Returns what was
    seen: ``waited_s``, ``busy_cores`` (the last sample; None where /proc/stat
    is unreadable) and ``quiet`` (whether it got under the bound). Never
    raises: a busy machine delays the run, it does not stop it."""
    t0 = time.monotonic()
    prev, last = read(), None
    while prev is not None:
        sleep(sample_s)
        cur = read()
        used = cores_between(prev, cur)
        if used is None:
            break
        last = used["busy_cores"] + used["steal_cores"]
        if last < busy_cores or time.monotonic() - t0 >= max_s:
            break
        prev = cur
    return {"waited_s": round(time.monotonic() - t0, 3),
            "busy_cores": None if last is None else round(last, 3),
            "quiet": last is not None and last < busy_cores}


def _versions() -> dict:
    out = {"python": platform.python_version(), "kernel": platform.release(),
           "machine": platform.machine()}
    try:
        import ttnet
        out["ttnet"] = ttnet.__version__
    except Exception:  # pragma: no cover
        pass
    for mod in ("docker", "pyroute2", "simpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            pass
    return out


def run_emulation(topology: Topology, backend_name: str | None = None,
                  results_root: Path = Path("results"), run_id: str | None = None,
                  progress: Progress | None = None, engine_overrides: dict | None = None,
                  impair_engine: str | None = None,
                  extra_setup: Callable[[dict], None] | None = None,
                  monitor: Monitor | None = None, capture: bool | None = None) -> RunResult:
    """Run ``topology`` on a backend and return where its results are.

    ``extra_setup(hosts)`` runs after the impairments and before any agent
    starts; whatever it adds inside a host's namespace dies with the host.
    ``capture`` (default: ``topology.capture``) writes one pcap per
    ensemble into ``run_dir/capture/`` (:mod:`testbed.emulate.capture`),
    started right after extra_setup, stopped (SIGINT) before teardown.
    ``monitor(progress)`` is called from a helper thread about every
    MONITOR_INTERVAL_S while the flows run (sent/delivered per flow, counted
    from the growing event files), then once with ``progress.done`` set;
    whatever it raises is logged and ignored."""
    from testbed.emulate.backends import make_backend
    from testbed.emulate.impair import Impairments

    say = progress or (lambda msg: log.info("%s", msg))
    run_id = run_id or new_run_id()
    run_dir = (results_root / topology.name / run_id).resolve()
    run_dir.mkdir(parents=True)
    (run_dir / "logs").mkdir()
    # The run directory carries copies of the apps it runs (compare
    # simulates them again from there); programs run from the topology's own
    # directory, shared read-only into the hosts.
    source_dir = topology.base_dir
    topology = pack_apps(topology, run_dir)
    (run_dir / "topology.yaml").write_text(topology_to_yaml(topology))
    plan = {"run_id": run_id, "topology": topology.name, "ensembles": list(topology.ensembles),
            "port": AGENT_PORT, "flows": flows_plan(topology), "auth_key": topology.auth_key,
            "engine": {**topology.engine_settings(), **(engine_overrides or {})},
            "seed": topology.seed,
            "duration_s": topology.duration_s, "program_port": PROGRAM_PORT,
            "apps": {n: {"path": c.app_path, "function": c.app_function}
                     for n, c in topology.apps.items()},
            "programs": topology.programs,
            # killed: their events are written through (a kill or a
            # restart's kill loses none); restarted: rebooted at least once.
            "killed": sorted({e.ensemble for e in topology.events
                              if getattr(e, "action", None) in ("kill", "restart")}),
            "restarted": sorted({e.ensemble for e in topology.events
                                 if getattr(e, "action", None) == "restart"})}
    meta: dict = {"run_id": run_id, "topology": topology.name, "kind": "emulated",
                  "versions": _versions(), "started": time.time(), "seed": topology.seed}

    backend = make_backend(backend_name)
    meta["backend"] = backend.name
    meta["backend_run_id"] = backend.run_id      # its resources' tag (ttnet-<tag>-...)
    if topology.programs:
        if source_dir is None:
            raise ValueError(f"topology {topology.name!r} has run: programs but no "
                             "directory to run them from; load it from its file")
        plan["workdir"] = backend.share_dir(source_dir)
    write_json_atomic(run_dir / "plan.json", plan)
    impair = Impairments(f"{run_id[-4:]}", seed=topology.seed, engine=impair_engine,
                         log_dir=run_dir / "logs")
    hosts: dict = {}
    timeline = None
    # capture: one pcap per ensemble (testbed.emulate.capture); None: as the topology says.
    pcaps = None
    if topology.capture if capture is None else capture:
        from testbed.emulate.capture import Capture
        pcaps = Capture(run_dir)

    def command(host) -> list[str]:
        return ["python3", "-m", "testbed.guest.agent", "--name", host.name,
                "--results", host.results_dir]

    def apply_links(hs: dict) -> None:
        t = time.monotonic()
        if backend.clock_reference:
            # Known only once the hosts exist; no agent has read the plan yet.
            plan["clock"] = {"reference": backend.clock_reference}
            write_json_atomic(run_dir / "plan.json", plan)
        for h in hs.values():
            egress = {o.ip: topology.link(h.name, o.name) for o in hs.values() if o is not h}
            impair.apply(h.netns_path, h.ifname, egress, label=h.name,
                         later=_later_specs(topology, h.name, hs))
        if extra_setup is not None:
            extra_setup(hs)      # e.g. a test's extra iptables rules in a host
        if pcaps is not None:    # last: nothing here fails after it has started
            pcaps.start(hs)      # listening before any agent sends
        meta["impair_s"] = round(time.monotonic() - t, 3)

    daemon_start = cpu_start = None
    try:
        say(f"[{topology.name}] up: {len(topology.ensembles)} ensembles on {backend.name}")
        t0 = time.monotonic()
        hosts = backend.up(topology, run_dir, command, before_start=apply_links)
        meta["up_s"] = round(time.monotonic() - t0, 3)
        meta["impairment_engine"] = impair.engine
        meta["hosts"] = {n: h.ip for n, h in hosts.items()}
        say(f"[{topology.name}] up in {meta['up_s']:.1f}s; impairments via {impair.engine}")
        _await_agents(run_dir, topology, READY_TIMEOUT_S, backend)
        meta["quiet_wait"] = quiet = wait_for_quiet()
        if not quiet["quiet"] and quiet["busy_cores"] is not None:
            say(f"[{topology.name}] this machine is still busy ({quiet['busy_cores']:.2f} "
                f"cores after {quiet['waited_s']:.0f}s of waiting): other work competes "
                "with the flows (the report's machine load note says how much)")
        start_at = time.time() + START_DELAY_S
        end_at = start_at + topology.expected_duration_s() + END_GRACE_S
        write_json_atomic(run_dir / "go.json", {
            "routes": {n: f"{h.ip}:{AGENT_PORT}" for n, h in hosts.items()},
            "start_at": start_at, "end_at": end_at})
        say(f"[{topology.name}] running flows (at most {end_at - time.time():.0f}s)")
        meta["start_at"] = start_at
        # The daemon's own CPU from here on is what impairing the flows cost
        daemon_start = impair.stats().get("daemon")
        cpu_start = machine_cpu()
        if topology.events:
            from testbed.emulate.timeline import TimelineRunner
            timeline = TimelineRunner(topology, hosts, impair, backend, start_at, end_at,
                                      say=say, run_dir=run_dir)
            timeline.start()
        timeout_s = end_at - time.time() + 15
        if monitor is None:
            codes = backend.wait(timeout_s=timeout_s)
        else:
            watcher = RunWatcher(run_dir, topology.name, plan["flows"], start_at, end_at)
            codes = watch(lambda: backend.wait(timeout_s=timeout_s), watcher.snapshot, monitor)
        meta["exit_codes"] = codes
        meta["run_s"] = round(time.time() - start_at, 3)
        if timeline is not None:
            timeline.stop()
            meta["events_applied"] = timeline.applied
        meta["impair_stats"] = impair.stats()
        cpu_end = machine_cpu()
        if cpu_start and cpu_end:
            meta["machine_cpu"] = {"at_start": cpu_start, "at_end": cpu_end,
                                   "cores": os.cpu_count()}
        if daemon_start and "daemon" in meta["impair_stats"]:
            meta["impair_stats"]["daemon_at_start"] = daemon_start
    finally:
        if timeline is not None:       # also on failure: no event after teardown
            timeline.stop()
            meta.setdefault("events_applied", timeline.applied)
        if pcaps is not None:          # complete pcaps, also on failure
            meta["capture"] = pcaps.stop()
        for name in hosts:
            try:
                (run_dir / "logs" / f"{name}.log").write_text(backend.logs(name))
            except Exception:
                log.debug("no logs for %s", name, exc_info=True)
        t1 = time.monotonic()
        down_error = None
        for step in (impair.close, backend.down):     # each gets its chance
            try:
                step()
            except Exception as exc:
                # the run's results are on disk: record them before reporting
                # that teardown was incomplete (`testbed down --all` retries it)
                down_error = down_error or exc
                meta.setdefault("down_errors", []).append(f"{type(exc).__name__}: {exc}")
        meta["down_s"] = round(time.monotonic() - t1, 3)
        meta["counters"] = _read_counters(run_dir, topology)
        meta["outcomes"] = _read_outcomes(run_dir, topology)
        meta["finished"] = time.time()
        try:
            meta["clocks"] = _clocks(backend, topology, meta)
        except Exception as exc:       # never at the cost of meta.json
            log.exception("clocks not recorded")
            meta["clocks"] = {"error": f"{type(exc).__name__}: {exc}"}
        write_json_atomic(run_dir / "meta.json", meta)
        if down_error is not None:
            raise down_error
        say(f"[{topology.name}] down in {meta['down_s']:.1f}s")
    return RunResult(run_dir, meta)


def _later_specs(topology: Topology, name: str, hosts: dict) -> dict:
    """By destination IP, the specs the fault timeline gives the links
    from ``name`` later: installed ahead, so each event is one quick call."""
    from testbed.spec.timeline import link_history
    if not topology.events:
        return {}
    return {o.ip: [spec for _, spec in link_history(topology, name, o.name)[1:]]
            for o in hosts.values() if o.name != name}


def _await_agents(run_dir: Path, topology: Topology, timeout_s: float, backend) -> None:
    deadline = time.monotonic() + timeout_s
    want = [run_dir / f"ready-{e}" for e in topology.ensembles]
    while time.monotonic() < deadline:
        if all(p.exists() for p in want):
            return
        time.sleep(0.05)
    missing = [p.name[6:] for p in want if not p.exists()]
    logs = {m: backend.logs(m)[-2000:] for m in missing[:3]}
    from testbed.emulate.backends.base import BackendError
    raise BackendError(f"agents never became ready: {missing}; last log lines: {logs}")


def _clocks(backend, topology: Topology, meta: dict) -> dict:
    """meta.json ``clocks`` (:mod:`testbed.spec.clocks`): what the agents
    measured against the backend's clock reference, from their outcomes;
    without a reference every host ran on this host's kernel clock."""
    if not backend.clock_reference:
        return clocks.one_kernel(list(topology.ensembles), meta.get("start_at", meta["started"]),
                                 meta["finished"])
    out: dict = {"method": clocks.METHOD_PROBE,
                 "reference": f"{backend.clock_reference} (a container on this host's "
                              "kernel clock)", "ensembles": {}}
    for e in topology.ensembles:
        got = (meta.get("outcomes", {}).get(e) or {}).get("clock")
        if not isinstance(got, dict):
            out["ensembles"][e] = {"start": {"error": "the agent recorded no clock"},
                                   "end": {"error": "the agent recorded no clock"},
                                   "drift_ppm": None}
            continue
        out["ensembles"][e] = clocks.ensemble_clock(got.get("start"), got.get("end"))
    return out


def _read_counters(run_dir: Path, topology: Topology) -> dict:
    out = {}
    for e in topology.ensembles:
        p = run_dir / f"counters-{e}.json"
        if p.exists():
            try:
                out[e] = json.loads(p.read_text())
            except ValueError:
                out[e] = {"unreadable": 1}
    return out


def _read_outcomes(run_dir: Path, topology: Topology) -> dict:
    """Each agent's ``outcome-<name>.json``. An agent that left none, or an
    unreadable one (it crashed, never got the go signal, the run was
    aborted), gets ``{"missing": True}`` with every ensure=True message it
    sources counted in ``ensure_failures``: nothing says they arrived."""
    out = {}
    for e in topology.ensembles:
        try:
            got = json.loads((run_dir / f"outcome-{e}.json").read_text())
        except (OSError, ValueError):
            got = None
        if isinstance(got, dict) and isinstance(got.get("ensure_failures"), int):
            out[e] = got
        else:
            ensure = sum(f.count for f in topology.flows if f.src == e and f.ensure)
            out[e] = {"ensemble": e, "missing": True, "ensure_failures": ensure}
    return out
