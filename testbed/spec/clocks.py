"""Clocks across hosts: the probe arithmetic, what a run records, the correction.

One-way latency is a deliver time (the receiver's clock) minus a send time
(the sender's clock). On one kernel both are the same clock. Ensembles on
other machines (the swarm backend) each measure their clock against a
reference on the orchestrating host, NTP-style, at their start and at their
end; the analysis moves their event times onto the reference clock.

One probe: the ensemble sends at t0 (its clock), the reference receives at
t1 and answers at t2 (its clock), the answer arrives at t3 (the ensemble's
clock). With d1, d2 >= 0 the one-way times of request and answer and
``theta`` the true offset (reference minus ensemble)::

    offset      = ((t1 - t0) + (t2 - t3)) / 2  = theta + (d1 - d2) / 2
    uncertainty = ((t3 - t0) - (t2 - t1)) / 2  = (d1 + d2) / 2

so ``|offset - theta| <= uncertainty`` whatever the asymmetry of the path.
Of several probes the one with the smallest round trip is kept.

``offset_s`` is NTP's sign: the reference clock minus the ensemble's clock,
so an event time moves onto the reference clock as ``t + offset``
(:func:`corrected`). A measurement also has ``rtt_s`` (network round trip,
2 x uncertainty) and ``at`` (the ensemble's clock, mid-probe).

meta.json ``clocks``: ``method`` ("ntp-probe" or "one kernel"),
``reference`` (what was measured against), ``ensembles``: {name: {start,
end, drift_ppm, drift_uncertainty_ppm}} -- a measurement each, or
``{"error": why}``; the drift (how fast the offset changed from start to
end) is known within the sum of the two uncertainties over the time
between them. The
ensembles sit under their own key so an ensemble named "method" cannot
collide.

Stdlib only: the guest agent carries this module into a container.
"""
from __future__ import annotations

import math
from typing import Any

METHOD_PROBE = "ntp-probe"
#: The clock reference's UDP port (beside the agents' 8225 and programs' 8226).
CLOCK_PORT = 8227
METHOD_ONE_KERNEL = "one kernel"


def probe_sample(t0: float, t1: float, t2: float, t3: float) -> dict[str, float]:
    """One exchange's offset (reference minus local), uncertainty, round
    trip and mid time (local clock)."""
    rtt = (t3 - t0) - (t2 - t1)
    return {"offset_s": ((t1 - t0) + (t2 - t3)) / 2, "uncertainty_s": rtt / 2,
            "rtt_s": rtt, "at": (t0 + t3) / 2}


def best_sample(samples: list[tuple[float, float, float, float]]) -> dict[str, float] | None:
    """The measurement of the exchange with the smallest round trip (None
    for no exchange). An exchange whose round trip comes out negative (a
    clock stepped during it) is not taken."""
    results = [probe_sample(*s) for s in samples]
    results = [r for r in results if r["rtt_s"] >= 0]
    if not results:
        return None
    return min(results, key=lambda r: r["rtt_s"])


def _measurement(obj: Any) -> dict | None:
    """A measurement dict with finite offset, uncertainty and at, or None."""
    if not isinstance(obj, dict):
        return None
    try:
        vals = [float(obj[k]) for k in ("offset_s", "uncertainty_s", "at")]
    except (KeyError, TypeError, ValueError):
        return None
    return obj if all(math.isfinite(v) for v in vals) else None


def drift_ppm(start: dict | None, end: dict | None) -> float | None:
    """How fast the offset changed between two measurements, in parts per
    million (None without both, or without time between them)."""
    s, e = _measurement(start), _measurement(end)
    if s is None or e is None or e["at"] <= s["at"]:
        return None
    return (e["offset_s"] - s["offset_s"]) / (e["at"] - s["at"]) * 1e6


def ensemble_clock(start: dict | None, end: dict | None) -> dict:
    """One ensemble's entry of meta.json ``clocks.ensembles``."""
    entry: dict[str, Any] = {"start": start if start is not None else {"error": "not measured"},
                             "end": end if end is not None else {"error": "not measured"}}
    drift = drift_ppm(start, end)
    entry["drift_ppm"] = None if drift is None else round(drift, 3)
    if drift is not None:
        # Each offset is known within its uncertainty: so is their slope.
        s, e = start or {}, end or {}
        entry["drift_uncertainty_ppm"] = round(
            (float(s["uncertainty_s"]) + float(e["uncertainty_s"]))
            / (float(e["at"]) - float(s["at"])) * 1e6, 3)
    return entry


def one_kernel(ensembles: list[str], at_start: float, at_end: float,
               reference: str = "the orchestrating host's kernel clock") -> dict:
    """``clocks`` for a run whose ensembles all share this host's kernel
    clock: offsets 0, uncertainty 0 -- by construction, not measured."""
    zero = {"offset_s": 0.0, "uncertainty_s": 0.0, "rtt_s": 0.0}
    return {"method": METHOD_ONE_KERNEL, "reference": reference,
            "ensembles": {e: {"start": {**zero, "at": at_start}, "end": {**zero, "at": at_end},
                              "drift_ppm": 0.0} for e in ensembles}}


def significant_offset(m: dict) -> float:
    """A measurement's offset where it is told apart from 0, else 0: an
    offset within its own uncertainty is consistent with clocks that agree,
    and moving times by it could only add that much noise (measured on a
    one-node swarm: offsets of -2 to +37 us within uncertainties of 22-96
    us). Either way the time is off by at most the uncertainty."""
    off = float(m["offset_s"])
    return off if abs(off) > float(m["uncertainty_s"]) else 0.0


def offset_at(entry: dict, t: float) -> float | None:
    """The ensemble's offset at its local time ``t`` (each measurement's
    :func:`significant_offset`): linear between its start and end
    measurements, the nearer one outside them, the one there is if only
    one; None if neither."""
    s, e = _measurement(entry.get("start")), _measurement(entry.get("end"))
    if s is None and e is None:
        return None
    if s is None or e is None:
        return significant_offset(s or e)  # type: ignore[arg-type]
    t0, t1 = float(s["at"]), float(e["at"])
    o0, o1 = significant_offset(s), significant_offset(e)
    if t1 <= t0 or t <= t0:
        return o0
    if t >= t1:
        return o1
    return o0 + (o1 - o0) * (t - t0) / (t1 - t0)


def measured(clocks: Any) -> dict[str, dict]:
    """The ensembles whose event times need moving: those of a
    ``ntp-probe`` record (empty for "one kernel", for none at all, or for
    anything unreadable)."""
    if not isinstance(clocks, dict) or clocks.get("method") != METHOD_PROBE:
        return {}
    ens = clocks.get("ensembles")
    return {n: c for n, c in ens.items() if isinstance(c, dict)} if isinstance(ens, dict) else {}


def corrected(entry: dict, t: float) -> float:
    """Local event time ``t`` of an ensemble on the reference clock (as is
    if the ensemble has no measurement)."""
    off = offset_at(entry, t)
    return t if off is None else t + off


def max_uncertainty(clocks: Any) -> tuple[float, str] | None:
    """(largest uncertainty of any measurement, its ensemble); None if no
    measurement."""
    if not isinstance(clocks, dict) or not isinstance(clocks.get("ensembles"), dict):
        return None
    best: tuple[float, str] | None = None
    for name, entry in clocks["ensembles"].items():
        for when in ("start", "end"):
            m = _measurement((entry or {}).get(when))
            if m is not None and (best is None or float(m["uncertainty_s"]) > best[0]):
                best = (float(m["uncertainty_s"]), name)
    return best


def ensemble_uncertainty(entry: Any) -> float | None:
    """The larger uncertainty of an ensemble's two measurements (None if it
    has none)."""
    ms = [_measurement((entry or {}).get(w)) for w in ("start", "end")] \
        if isinstance(entry, dict) else []
    vals = [float(m["uncertainty_s"]) for m in ms if m is not None]
    return max(vals) if vals else None
