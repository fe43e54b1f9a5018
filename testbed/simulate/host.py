"""The simulator's model of the emulating host: what a datagram picks up
beyond the link (CPU per datagram, wake-up latency, its spread).

Owns :class:`HostModel` and reading the stored calibration. It never measures
anything itself (``testbed.pipelines.calibrate`` does) and never runs a
simulation.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CALIBRATION_NAME = "calibration.json"
#: Used when no calibration exists: roughly what the UDP stack alone costs
#: per datagram on a 2-core VM (measured once here; recalibrate!).
DEFAULT_HOST_COST_S = 40e-6
#: Backends that enforce an ensemble's ``cpus:`` (docker: a CFS quota per
#: container). netns only warns, so its runs are simulated without them.
CPU_LIMIT_BACKENDS = frozenset({"docker", "swarm"})   # swarm: the task's NanoCPUs


def enforces_cpu_limits(backend: str | None) -> bool:
    """Whether a run on ``backend`` had its ensembles' ``cpus:`` enforced."""
    return backend in CPU_LIMIT_BACKENDS


@dataclass(frozen=True)
class HostModel:
    """What the emulating host adds to every datagram beyond the link:
    ``host_cost_s`` of CPU on each side (serialised per host: it limits bulk
    transfers), ``hop_latency_s`` of latency that occupies no CPU (thread
    wake-ups, the NFQUEUE pass), and ``hop_noise_s``, the spread around it
    (quantiles of a per-datagram draw, median 0). Fitted by
    ``testbed.pipelines.calibrate``; ``source`` says where it came from.
    ``cpu_limits``: whether the host enforces the ensembles' ``cpus:``
    (as docker does: a quota of CPU per 100 ms period; not measured, set
    from the run's backend), so the simulator throttles them the same way."""

    host_cost_s: float = DEFAULT_HOST_COST_S
    hop_latency_s: float = 0.0
    hop_noise_s: tuple[float, ...] = ()
    source: str = "default"
    info: dict = field(default_factory=dict, compare=False, hash=False)
    cpu_limits: bool = True
    #: CPU per packet of the impairment emulator (the NFQUEUE daemon: one
    #: process serving every impaired packet of the host in turn), measured
    #: from its own CPU time; 0 where there is none (netem)
    emulator_cost_s: float = 0.0
    #: Cores of the emulating machine, shared by every host's and the
    #: emulator's CPU work (None: each host has a CPU of its own, the
    #: model before the machine was calibrated for it)
    cores: int | None = None

    def __post_init__(self) -> None:
        if not (self.host_cost_s >= 0 and self.hop_latency_s >= 0
                and self.emulator_cost_s >= 0):
            raise ValueError(f"host model needs host_cost_s, hop_latency_s and emulator_cost_s "
                             f">= 0, got {self.host_cost_s!r}, {self.hop_latency_s!r}, "
                             f"{self.emulator_cost_s!r}")

    @classmethod
    def from_calibration(cls, info: dict | None) -> "HostModel":
        if not info:
            return cls()
        return cls(float(info["host_cost_s"]), float(info.get("hop_latency_s", 0.0)),
                   tuple(float(x) for x in info.get("hop_noise_s", ())),
                   str(info.get("source", "calibrated")), dict(info),
                   emulator_cost_s=float(info.get("emulator_cost_s") or 0.0),
                   cores=int(info["cores"]) if info.get("cores") else None)

    def key(self) -> dict:
        """What identifies this model in a cached simulation."""
        return {"host_cost_s": self.host_cost_s, "hop_latency_s": self.hop_latency_s,
                "hop_noise_s": list(self.hop_noise_s), "source": self.source,
                "cpu_limits": self.cpu_limits, "emulator_cost_s": self.emulator_cost_s,
                "cores": self.cores}


def calibration_name(backend: str | None = None) -> str:
    """``calibration-<backend>.json`` (one per backend: what the emulator adds
    differs between containers and namespaces), or ``calibration.json``, the
    latest of any backend."""
    return f"calibration-{backend}.json" if backend else CALIBRATION_NAME


def _read(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text())
        float(info["host_cost_s"])
        return info
    except (ValueError, KeyError, TypeError):
        log.warning("%s is unreadable; using the default host model", path)
        return None


def load_calibration(results_root: Path = Path("results"), backend: str | None = None,
                     engine: str | None = None) -> dict | None:
    """The calibration stored in directory ``results_root`` (a results root,
    or a run it was pinned into), or None if there is none or it is
    unreadable. With ``backend`` (and ``engine``), the one measured on that
    backend (and impairment engine) is preferred; the latest of any backend
    is the fallback (the report then says they differ)."""
    root = Path(results_root)
    if backend:
        info = _read(root / calibration_name(backend))
        if info is not None and (engine is None or info.get("impairment_engine") in (None, engine)):
            return info
    return _read(root / CALIBRATION_NAME)
