"""The fidelity verdict: does the simulated model predict the emulated run?

Owns one judgement per flow and quantity, each PASS, FAIL or UNDETERMINED,
with the statistics behind it. It reads flow statistics (one emulated run,
and the simulated replications of the model) and nothing else; it never
runs an experiment and never explains a failure away.

Quantities, per judged flow:

- ``delivery``: for best-effort flows, the delivered share. The simulated
  and emulated shares are compared with Newcombe's hybrid-score interval
  for a difference of two proportions; the band is +/- ``delivery_tol``
  (2 percentage points, or a tenth of the smaller of the delivered and lost
  shares, whichever is larger). For ``ensure=True`` flows delivery is a
  guarantee, not a sample: PASS when every message arrived on both sides,
  otherwise judged like a best-effort share.
- ``p50`` and ``p95`` of the one-way latency: a distribution-free
  confidence interval of the emulated quantile from order statistics
  (exact binomial), against the band ``simulated quantile x (1 +/- tol)``
  (5% for p50, 10% for p95).

Outcome of one quantity: FAIL when the emulated interval lies wholly
outside the band (widened by the simulated quantile's own interval), PASS
when it lies wholly inside (narrowed by it), UNDETERMINED otherwise: the
run has too few samples to tell.

Error rates. Each interval has confidence ``1 - family_alpha / m`` over
the ``m`` statistical quantities judged in the topology (Bonferroni), so a
faithful model FAILs a whole topology with probability at most
``family_alpha / 2`` (0.1% by default). Messages of one run are not
independent (they share a congestion window, an RTO, a lossy burst): the
intervals use an effective sample size ``n / deff``, where the design
effect ``deff`` is measured on the model itself, as the variance of a
quantity across the simulated replications over the variance independent
samples would give (used when significantly above 1, else 1).
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from statistics import NormalDist

from testbed.analysis.stats import FlowStats, fmt_ms, percentile

#: Whole-topology false-alarm budget: a faithful model FAILs a topology
#: with probability at most half of this (FAIL is one-sided). With five
#: topologies judged in CI that is one red run in 400 at most.
FAMILY_ALPHA = 0.002
P50_TOL = 0.05
P95_TOL = 0.10
#: Delivery-ratio band: absolute, or relative to the smaller share.
DELIVERY_TOL_ABS = 0.02
DELIVERY_TOL_REL = 0.10
#: Fewer simulated replications than this cannot measure the design effect.
MIN_REPLICATIONS_FOR_DEFF = 5

PASS, FAIL, UNDETERMINED = "PASS", "FAIL", "UNDETERMINED"
QUANTILES = (("p50", 0.50, P50_TOL), ("p95", 0.95, P95_TOL))


@dataclass
class Judgement:
    """One quantity of one flow. ``emu_lo``/``emu_hi`` is the emulated
    interval (None = unbounded), ``band_lo``/``band_hi`` the band it was
    held to (FAIL side); values are seconds, or a share for delivery."""

    flow: str
    quantity: str
    outcome: str
    emu: float | None = None
    emu_lo: float | None = None
    emu_hi: float | None = None
    sim: float | None = None
    band_lo: float | None = None
    band_hi: float | None = None
    n_emu: int = 0
    deff: float = 1.0
    note: str = ""

    @property
    def unit(self) -> str:
        return "" if self.quantity == "delivery" else " ms"

    def cells(self) -> dict[str, str]:
        """The judgement's values formatted once, for every way of showing it:
        ``emu``, ``interval``, ``sim``, ``band`` (latencies in ms, shares as
        fractions)."""
        def f(v: float | None) -> str:
            if v is None:
                return "-"
            return f"{v:.4f}" if self.quantity == "delivery" else fmt_ms(v)
        lo = "-inf" if self.emu_lo is None else f(self.emu_lo)
        hi = "+inf" if self.emu_hi is None else f(self.emu_hi)
        return {"emu": f(self.emu), "interval": f"[{lo}, {hi}]", "sim": f(self.sim),
                "band": f"[{f(self.band_lo)}, {f(self.band_hi)}]"}

    def describe(self) -> str:
        c, unit = self.cells(), self.unit
        text = (f"{self.flow}: {self.quantity} emulated {c['emu']}{unit} {c['interval']} "
                f"(n={self.n_emu}, deff {self.deff:.1f}) vs simulated {c['sim']}{unit}, "
                f"band {c['band']}")
        return text + (f"; {self.note}" if self.note else "")


@dataclass
class Verdict:
    """Every judgement of one comparison, and structural failures (a flow
    missing on one side, an impairment that was not applied)."""

    judgements: list[Judgement] = field(default_factory=list)
    structural: list[str] = field(default_factory=list)
    family_alpha: float = FAMILY_ALPHA
    z: float = 0.0
    #: the thresholds the verdict was judged with, for the report
    tolerances: dict = field(default_factory=dict)

    def _of(self, outcome: str) -> list[Judgement]:
        return [j for j in self.judgements if j.outcome == outcome]

    @property
    def failed(self) -> list[Judgement]:
        return self._of(FAIL)

    @property
    def passed(self) -> list[Judgement]:
        return self._of(PASS)

    @property
    def undetermined(self) -> list[Judgement]:
        return self._of(UNDETERMINED)

    @property
    def failures(self) -> list[str]:
        return self.structural + [j.describe() for j in self.failed]

    @property
    def ok(self) -> bool:
        """No FAIL (undetermined quantities do not fail, but are counted)."""
        return not self.failures

    @property
    def outcome(self) -> str:
        if not self.ok:
            return FAIL
        return UNDETERMINED if self.undetermined else PASS

    def counts(self) -> str:
        return (f"{len(self.passed)} pass, {len(self.failed) + len(self.structural)} fail, "
                f"{len(self.undetermined)} undetermined")


# ----------------------------------------------------------------- intervals
def _binom_cdf(n: int, q: float) -> list[float]:
    """P(B <= k) for B ~ Binomial(n, q), k = 0..n (log space: no underflow)."""
    if q <= 0:
        return [1.0] * (n + 1)
    if q >= 1:
        return [0.0] * n + [1.0]
    lq, lr = math.log(q), math.log1p(-q)
    lg = math.lgamma(n + 1)
    out, acc = [], 0.0
    for k in range(n + 1):
        acc += math.exp(lg - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * lq + (n - k) * lr)
        out.append(min(acc, 1.0))
    return out


def order_statistic_bounds(n: int, q: float, alpha: float) -> tuple[int | None, int | None]:
    """1-based ranks (l, u) with P(x_(l) <= Q_q < x_(u)) >= 1 - alpha for n
    independent samples; None where no rank is far enough out (unbounded)."""
    if n <= 0:
        return None, None
    cdf = _binom_cdf(n, q)
    # B = number of samples below the true quantile ~ Binomial(n, q).
    lo = None
    for k in range(n, 0, -1):          # largest l with P(B < l) <= alpha/2
        if cdf[k - 1] <= alpha / 2:
            lo = k
            break
    hi = None
    for k in range(1, n + 1):          # smallest u with P(B >= u) <= alpha/2
        if 1 - cdf[k - 1] <= alpha / 2:
            hi = k
            break
    return lo, hi


def quantile_interval(values: list[float], q: float, alpha: float,
                      deff: float = 1.0) -> tuple[float | None, float | None]:
    """Distribution-free (1 - alpha) interval of the q-quantile of the
    population ``values`` came from, with effective sample size n / deff."""
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        return None, None
    n_eff = max(1, int(n / max(deff, 1.0)))
    lo, hi = order_statistic_bounds(n_eff, q, alpha)
    scale = n / n_eff
    lo_v = xs[max(0, math.floor(lo * scale) - 1)] if lo is not None else None
    if hi is None:
        hi_v = None
    else:
        rank = math.ceil(hi * scale)
        hi_v = xs[rank - 1] if rank <= n else None
    return lo_v, hi_v


def wilson(k: float, n: float, z: float) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(k1: float, n1: float, k2: float, n2: float, z: float) -> tuple[float, float]:
    """Newcombe's hybrid-score interval of p1 - p2 (his method 10)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1, z)
    l2, u2 = wilson(k2, n2, z)
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
            d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


# ------------------------------------------------------------ design effect
def _level(sorted_pool: list[float], x: float) -> float:
    """Mid-rank level of x in a sorted sample (ties count half)."""
    lo = bisect.bisect_left(sorted_pool, x)
    hi = bisect.bisect_right(sorted_pool, x)
    return (lo + hi) / 2 / len(sorted_pool)


def _variance(xs: list[float]) -> float:
    m = sum(xs) / len(xs)
    return sum((x - m) ** 2 for x in xs) / (len(xs) - 1)


def _design_effect(observed_var: float, iid_var: float, runs: int) -> float:
    """observed / iid variance when that ratio is significantly above 1
    (beyond the 95th percentile of chi-square / df, Wilson-Hilferty), else
    1: from 20 runs a ratio of 1.5 arises by chance alone, and would widen
    every interval for nothing."""
    if iid_var <= 0:
        return 1.0
    ratio = observed_var / iid_var
    k = runs - 1
    bound = (1 - 2 / (9 * k) + 1.6449 * math.sqrt(2 / (9 * k))) ** 3
    return ratio if ratio > bound else 1.0


def quantile_design_effect(pooled: list[float], runs: list[list[float]], q: float) -> float:
    """How much more a run's q-quantile varies (in level) than independent
    samples would make it: var over runs / (q(1-q)/n). 1 when unmeasurable."""
    runs = [r for r in runs if len(r) >= 2]
    if len(runs) < MIN_REPLICATIONS_FOR_DEFF or not pooled:
        return 1.0
    pool = sorted(pooled)
    levels = [_level(pool, percentile(r, q * 100)) for r in runs]
    n = sum(len(r) for r in runs) / len(runs)
    return _design_effect(_variance(levels), q * (1 - q) / n, len(runs))


def share_design_effect(shares: list[tuple[int, int]]) -> float:
    """The same for a delivered share: var of per-run shares / p(1-p)/n."""
    shares = [(k, n) for k, n in shares if n > 0]
    if len(shares) < MIN_REPLICATIONS_FOR_DEFF:
        return 1.0
    p = sum(k for k, _ in shares) / sum(n for _, n in shares)
    n = sum(n for _, n in shares) / len(shares)
    return _design_effect(_variance([k / m for k, m in shares]), p * (1 - p) / n, len(shares))


# ----------------------------------------------------------------- judging
def _judge_delivery(emu: FlowStats, sim: FlowStats, reps: list[FlowStats], z: float,
                    tol_abs: float, tol_rel: float) -> Judgement | None:
    ke, ne = emu.delivered - emu.unmatched, emu.sent
    ks, ns = sim.delivered - sim.unmatched, sim.sent
    j = Judgement(emu.flow, "delivery", PASS, emu=ke / ne, sim=ks / ns, n_emu=ne)
    if emu.ensure and ke == ne and ks == ns:
        j.band_lo = j.band_hi = 1.0
        j.emu_lo = j.emu_hi = 1.0
        j.note = "ensure=True: every message delivered on both sides"
        return j
    p_s = ks / ns
    tol = max(tol_abs, tol_rel * min(p_s, 1 - p_s))
    deff = share_design_effect([(r.delivered - r.unmatched, r.sent) for r in reps])
    lo, hi = newcombe(ks / deff, ns / deff, ke / deff, ne / deff, z)
    # interval of (sim - emu); report it as the emulated share's range
    j.emu_lo, j.emu_hi = p_s - hi, p_s - lo
    j.band_lo, j.band_hi = p_s - tol, p_s + tol
    j.deff = deff
    if lo > tol or hi < -tol:
        j.outcome = FAIL
    elif -tol <= lo and hi <= tol:
        j.outcome = PASS
    else:
        j.outcome = UNDETERMINED
    j.note = f"tolerance +/-{tol:.3f}"
    return j


def _judge_quantile(emu: FlowStats, sim: FlowStats, reps: list[FlowStats], name: str,
                    q: float, tol: float, alpha: float) -> Judgement:
    deff = quantile_design_effect(sim.latencies, [r.latencies for r in reps], q)
    e_lo, e_hi = quantile_interval(emu.latencies, q, alpha, deff)
    s_lo, s_hi = quantile_interval(sim.latencies, q, alpha, deff)
    s = percentile(sim.latencies, q * 100)
    j = Judgement(emu.flow, name, UNDETERMINED, emu=percentile(emu.latencies, q * 100),
                  emu_lo=e_lo, emu_hi=e_hi, sim=s, n_emu=len(emu.latencies), deff=deff)
    # FAIL side: the band around the widest the simulated quantile may be.
    fail_lo = (s_lo if s_lo is not None else 0.0) * (1 - tol)
    fail_hi = s_hi * (1 + tol) if s_hi is not None else math.inf
    j.band_lo, j.band_hi = fail_lo, (fail_hi if fail_hi != math.inf else None)
    if (e_lo is not None and e_lo > fail_hi) or (e_hi is not None and e_hi < fail_lo):
        j.outcome = FAIL
        return j
    # PASS side: inside the band around the narrowest it may be.
    if None not in (e_lo, e_hi, s_lo, s_hi):
        if s_hi * (1 - tol) <= e_lo and e_hi <= s_lo * (1 + tol):
            j.outcome = PASS
            return j
    if e_lo is None or e_hi is None:
        j.note = "too few samples for an interval at this confidence"
    return j


def judge(rows: list, sim_replications: list[dict[str, FlowStats]] | None = None,
          structural: list[str] | None = None, family_alpha: float = FAMILY_ALPHA,
          p50_tol: float = P50_TOL, p95_tol: float = P95_TOL,
          delivery_tol_abs: float = DELIVERY_TOL_ABS,
          delivery_tol_rel: float = DELIVERY_TOL_REL) -> Verdict:
    """Judge every flow of ``rows`` (``compare.FlowComparison``: ``flow``,
    ``emu``, ``sim`` FlowStats). ``sim_replications`` are the simulated
    runs' per-flow stats (for the design effect); ``structural`` are
    failures found elsewhere (e.g. the delay floor)."""
    verdict = Verdict(structural=list(structural or []), family_alpha=family_alpha,
                      tolerances={"p50": p50_tol, "p95": p95_tol,
                                  "delivery_abs": delivery_tol_abs,
                                  "delivery_rel": delivery_tol_rel})
    judged = []
    for row in rows:
        if row.emu.sent == 0 or row.sim.sent == 0:
            side = "emulation" if row.emu.sent == 0 else "simulation"
            verdict.structural.append(f"{row.flow}: no messages sent in the {side}")
        elif bool(row.emu.latencies) != bool(row.sim.latencies):
            side = "emulation" if not row.emu.latencies else "simulation"
            verdict.structural.append(f"{row.flow}: nothing delivered in the {side}")
        else:
            judged.append(row)
    m = max(1, sum(1 + (len(QUANTILES) if r.emu.latencies else 0) for r in judged))
    alpha = family_alpha / m
    z = NormalDist().inv_cdf(1 - alpha / 2)
    verdict.z = z
    for row in judged:
        reps = [r[row.flow] for r in (sim_replications or []) if row.flow in r]
        verdict.judgements.append(_judge_delivery(row.emu, row.sim, reps, z,
                                                  delivery_tol_abs, delivery_tol_rel))
        if not row.emu.latencies:
            continue
        for name, q, tol in ((n, q, {"p50": p50_tol, "p95": p95_tol}[n])
                             for n, q, _ in QUANTILES):
            verdict.judgements.append(_judge_quantile(row.emu, row.sim, reps, name, q,
                                                      tol, alpha))
    return verdict
