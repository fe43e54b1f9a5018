"""Clocks across hosts: the time responder (answers, malformed input), the
probe against it on loopback (a known offset found within its
uncertainty, an unreachable reference), the offset arithmetic with
asymmetric delays, what a run records in meta.json, the correction of
event times in load_events, and the report's clock notes."""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from testbed.analysis.stats import flow_stats, load_events
from testbed.emulate import run as run_mod
from testbed.guest import clock as guest_clock
from testbed.guest.clock import ANSWER, KIND_ANSWER, KIND_REQUEST, MAGIC, REQUEST, Responder
from testbed.pipelines.evaluate import CLOCK_WARN_SHARE, clock_notes
from testbed.spec import clocks
from testbed.spec.model import LinkSpec, Topology

DATA = Path(__file__).resolve().parents[1] / "data"


# --- the responder ----------------------------------------------------------

def test_responder_answers_with_seq_t0_and_its_receive_and_send_times():
    times = iter([50.25])
    r = Responder(sock=None, clock=lambda: next(times))
    out = r.answer(REQUEST.pack(MAGIC, KIND_REQUEST, 7, 12.5), t1=50.0)
    magic, kind, seq, t0, t1, t2 = ANSWER.unpack(out)
    assert (magic, kind, seq, t0, t1, t2) == (MAGIC, KIND_ANSWER, 7, 12.5, 50.0, 50.25)
    assert r.malformed == 0


@pytest.mark.parametrize("data", [
    b"", b"x", REQUEST.pack(MAGIC, KIND_REQUEST, 1, 1.0)[:-1],
    REQUEST.pack(MAGIC, KIND_REQUEST, 1, 1.0) + b"\0",
    REQUEST.pack(b"NTPX", KIND_REQUEST, 1, 1.0),
    REQUEST.pack(MAGIC, KIND_ANSWER, 1, 1.0),
    ANSWER.pack(MAGIC, KIND_ANSWER, 1, 1.0, 2.0, 3.0),
    b"\xff" * 2000,
])
def test_responder_drops_and_counts_malformed_datagrams(data):
    r = Responder(sock=None, clock=lambda: 1.0)
    assert r.answer(data, t1=1.0) is None
    assert r.malformed == 1


def _serve(offset_s: float = 0.0, seconds: float = 5.0):
    """A responder on loopback whose clock is ``offset_s`` ahead; returns
    (its "ip:port", the responder, its thread)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    r = Responder(sock, clock=lambda: time.time() + offset_s)
    th = threading.Thread(target=r.serve, args=(time.monotonic() + seconds,), daemon=True)
    th.start()
    return f"127.0.0.1:{sock.getsockname()[1]}", r, th


def test_responder_survives_garbage_and_still_answers():
    addr, r, th = _serve(seconds=3.0)
    host, port = addr.split(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for junk in (b"", b"hello", b"\0" * 17, b"\xff" * 1500):
        s.sendto(junk, (host, int(port)))
    s.close()
    got = guest_clock.probe(addr, probes=4, budget_s=2.0)
    assert got.get("answered") == 4, got
    deadline = time.monotonic() + 2
    while r.answered < 4 and time.monotonic() < deadline:   # counted after its sendto
        time.sleep(0.01)
    assert r.malformed == 4 and r.answered == 4


# --- the probe ---------------------------------------------------------------

@pytest.mark.parametrize("offset", [0.0, 0.005, -0.0123])
def test_probe_finds_a_known_offset_within_its_uncertainty(offset):
    addr, _, _ = _serve(offset_s=offset)
    t = time.monotonic()
    got = guest_clock.probe(addr, probes=16, spacing_s=0.002, budget_s=2.0)
    assert time.monotonic() - t < 2.5
    assert got["probes"] == 16 and got["answered"] == 16, got
    assert abs(got["offset_s"] - offset) <= got["uncertainty_s"] + 1e-6, got
    assert 0 <= got["uncertainty_s"] < 0.005 and got["rtt_s"] == pytest.approx(
        2 * got["uncertainty_s"], abs=1e-8)


def test_probe_of_an_unreachable_reference_records_why_and_keeps_its_budget():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                  # nobody there
    t = time.monotonic()
    got = guest_clock.probe(f"127.0.0.1:{port}", probes=100, spacing_s=0.01, budget_s=0.5)
    assert time.monotonic() - t < 1.0
    assert "error" in got and got["answered"] == 0
    assert "error" in guest_clock.probe("no-port-here", budget_s=0.2)
    assert "error" in guest_clock.probe("name.invalid:8227", budget_s=0.3)


# --- the arithmetic ----------------------------------------------------------

@pytest.mark.parametrize("theta", [0.0, 0.005, -0.25, 3.0])
@pytest.mark.parametrize("d1,d2,proc", [(0.001, 0.001, 0.0), (0.0001, 0.009, 0.0002),
                                        (0.02, 0.0005, 0.001), (0.0, 0.0, 0.0)])
def test_true_offset_lies_within_the_uncertainty_whatever_the_asymmetry(theta, d1, d2, proc):
    """Reference clock = true time + theta; one-way delays d1 (request),
    d2 (answer); the reference takes ``proc`` to answer."""
    t0 = 1000.0
    t1 = t0 + d1 + theta
    t2 = t1 + proc
    t3 = t0 + d1 + proc + d2
    m = clocks.probe_sample(t0, t1, t2, t3)
    assert abs(m["offset_s"] - theta) <= m["uncertainty_s"] + 1e-12
    assert m["uncertainty_s"] == pytest.approx((d1 + d2) / 2)
    assert m["offset_s"] == pytest.approx(theta + (d1 - d2) / 2)


def test_best_sample_is_the_smallest_round_trip_and_skips_impossible_ones():
    def sample(theta, d1, d2, t0=10.0):
        return (t0, t0 + d1 + theta, t0 + d1 + theta, t0 + d1 + d2)
    best = clocks.best_sample([sample(0.1, 0.01, 0.03), sample(0.1, 0.001, 0.002),
                               sample(0.1, 0.004, 0.0)])
    assert best["rtt_s"] == pytest.approx(0.003)
    assert clocks.best_sample([]) is None
    assert clocks.best_sample([(10.0, 10.0, 10.0, 9.0)]) is None     # t3 before t0


def test_offset_interpolates_between_start_and_end_and_drift_in_ppm():
    entry = clocks.ensemble_clock(
        {"offset_s": -0.005, "uncertainty_s": 1e-4, "at": 100.0},
        {"offset_s": -0.007, "uncertainty_s": 1e-4, "at": 200.0})
    assert entry["drift_ppm"] == pytest.approx(-20.0)
    assert entry["drift_uncertainty_ppm"] == pytest.approx(2.0)       # 0.2 ms over 100 s
    assert clocks.offset_at(entry, 150.0) == pytest.approx(-0.006)
    assert clocks.offset_at(entry, 50.0) == pytest.approx(-0.005)     # before: the start's
    assert clocks.offset_at(entry, 300.0) == pytest.approx(-0.007)    # after: the end's
    only_start = clocks.ensemble_clock({"offset_s": 0.002, "uncertainty_s": 0, "at": 1.0},
                                       {"error": "timeout"})
    assert only_start["drift_ppm"] is None and clocks.offset_at(only_start, 9.0) == 0.002
    assert clocks.offset_at(clocks.ensemble_clock(None, None), 1.0) is None



def test_an_offset_within_its_uncertainty_moves_nothing():
    """On one node the measured offsets are noise within their uncertainty:
    moving times by them would add that noise, not remove an error."""
    noise = clocks.ensemble_clock({"offset_s": 3.7e-5, "uncertainty_s": 9.6e-5, "at": 1.0},
                                  {"offset_s": -2e-6, "uncertainty_s": 2.2e-5, "at": 13.0})
    assert clocks.offset_at(noise, 5.0) == 0.0 and clocks.corrected(noise, 5.0) == 5.0
    # one end significant, the other not: linear from 0 to it
    half = clocks.ensemble_clock({"offset_s": 5e-5, "uncertainty_s": 1e-4, "at": 0.0},
                                 {"offset_s": 0.004, "uncertainty_s": 1e-4, "at": 10.0})
    assert clocks.offset_at(half, 5.0) == pytest.approx(0.002)


# --- meta.json ---------------------------------------------------------------

class _Backend:
    def __init__(self, ref):
        self.clock_reference = ref


def test_meta_clocks_one_kernel_without_a_reference_measured_with_one():
    topo = Topology("t", ("a", "b"), LinkSpec())
    meta = {"started": 1.0, "start_at": 2.0, "finished": 9.0}
    one = run_mod._clocks(_Backend(None), topo, meta)
    assert one["method"] == "one kernel" and set(one["ensembles"]) == {"a", "b"}
    assert one["ensembles"]["a"]["start"] == {"offset_s": 0.0, "uncertainty_s": 0.0,
                                              "rtt_s": 0.0, "at": 2.0}
    assert clocks.measured(one) == {}                 # nothing to correct
    start = {"offset_s": 0.001, "uncertainty_s": 0.0002, "rtt_s": 0.0004, "at": 10.0}
    end = {"offset_s": 0.0011, "uncertainty_s": 0.0002, "rtt_s": 0.0004, "at": 20.0}
    meta["outcomes"] = {"a": {"clock": {"reference": "10.0.0.9:8227", "start": start,
                                        "end": end}},
                        "b": {"missing": True}}
    got = run_mod._clocks(_Backend("10.0.0.9:8227"), topo, meta)
    assert got["method"] == "ntp-probe" and got["reference"].startswith("10.0.0.9:8227")
    assert got["ensembles"]["a"]["start"] == start and got["ensembles"]["a"]["end"] == end
    assert got["ensembles"]["a"]["drift_ppm"] == pytest.approx(10.0)
    assert "error" in got["ensembles"]["b"]["start"]


# --- the correction in load_events -----------------------------------------

def _ev(kind, flow, msg, src, dst, t, **kw):
    return {"event": kind, "flow": flow, "msg": msg, "src": src, "dst": dst, "size": 10,
            "ensure": True, "t": t, **kw}


def _synthetic_run(tmp_path: Path, clocks_record: dict | None) -> Path:
    """a sends at true times 100 + k, b (clock 5 ms ahead) receives 10 ms
    later; b -> a the same the other way."""
    run = tmp_path / "run"
    run.mkdir(parents=True)
    skew = 0.005
    a = [_ev("send", "ab", k, "a", "b", 100.0 + k) for k in range(5)]
    a += [_ev("deliver", "ba", k, "b", "a", 100.5 + k + 0.010, intact=True) for k in range(5)]
    b = [_ev("deliver", "ab", k, "a", "b", 100.0 + k + 0.010 + skew, intact=True)
         for k in range(5)]
    b += [_ev("send", "ba", k, "b", "a", 100.5 + k + skew) for k in range(5)]
    for name, evs in (("a", a), ("b", b)):
        (run / f"events-{name}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evs))
    meta = {"kind": "emulated"}
    if clocks_record is not None:
        meta["clocks"] = clocks_record
    (run / "meta.json").write_text(json.dumps(meta))
    return run


def _measured(b_offset: float) -> dict:
    def m(off, at):
        return {"offset_s": off, "uncertainty_s": 0.0001, "rtt_s": 0.0002, "at": at}
    return {"method": "ntp-probe", "reference": "x",
            "ensembles": {"a": clocks.ensemble_clock(m(0.0, 99.0), m(0.0, 106.0)),
                          "b": clocks.ensemble_clock(m(b_offset, 99.0), m(b_offset, 106.0))}}


def test_load_events_corrects_a_receiver_clock_5ms_ahead(tmp_path):
    run = _synthetic_run(tmp_path, _measured(-0.005))
    raw = flow_stats(load_events(run, correct_clocks=False))
    assert raw["ab"].latencies == pytest.approx([0.015] * 5)
    assert raw["ba"].latencies == pytest.approx([0.005] * 5)
    got = flow_stats(load_events(run))
    assert got["ab"].latencies == pytest.approx([0.010] * 5, abs=1e-9)
    assert got["ba"].latencies == pytest.approx([0.010] * 5, abs=1e-9)


def test_load_events_leaves_one_kernel_and_clockless_runs_as_they_are(tmp_path):
    for i, rec in enumerate((None, clocks.one_kernel(["a", "b"], 99.0, 106.0),
                             {"method": "??"})):
        run = _synthetic_run(tmp_path / str(i), rec)
        assert load_events(run) == load_events(run, correct_clocks=False)
        assert flow_stats(load_events(run))["ab"].latencies == pytest.approx([0.015] * 5)


@pytest.mark.parametrize("name", ["power-run", "power-rto-run"])
def test_recorded_runs_load_exactly_as_before(name):
    run = DATA / "fidelity" / name
    assert "clocks" not in json.loads((run / "meta.json").read_text())
    assert load_events(run) == load_events(run, correct_clocks=False)


# --- the report ----------------------------------------------------------------

def _topo(delay_s: float) -> Topology:
    return Topology("t", ("a", "b"), LinkSpec(delay_s=delay_s),
                    links={("b", "a"): LinkSpec(delay_s=0.050)})


def _meta_with(unc_a: float, unc_b: float | None) -> dict:
    def entry(u):
        if u is None:
            return clocks.ensemble_clock(None, None)
        m = {"offset_s": 0.0003, "uncertainty_s": u, "rtt_s": 2 * u, "at": 1.0}
        return clocks.ensemble_clock(m, {**m, "at": 11.0})
    return {"clocks": {"method": "ntp-probe", "reference": "10.0.0.9:8227 (here)",
                       "ensembles": {"a": entry(unc_a), "b": entry(unc_b)}}}


def test_report_states_the_largest_uncertainty_without_warning_when_small():
    notes = clock_notes(_meta_with(0.00002, 0.00003), _topo(0.001))
    assert len(notes) == 1 and "WARNING" not in notes[0]
    assert "largest uncertainty 0.030 ms (b)" in notes[0] and "smallest link delay 1 ms" in notes[0]


def test_report_warns_when_uncertainty_exceeds_a_tenth_of_a_link_delay():
    assert CLOCK_WARN_SHARE == 0.10
    notes = clock_notes(_meta_with(0.0001, 0.00005), _topo(0.001))   # 0.15 ms of 1 ms
    warn = [n for n in notes if n.startswith("WARNING")]
    assert len(warn) == 1 and "a->b by up to 0.150 ms of 1 ms" in warn[0], notes
    assert "b->a" not in warn[0]                                      # 0.15 ms of 50 ms: fine


def test_report_warns_about_an_ensemble_without_a_measurement():
    notes = clock_notes(_meta_with(0.00001, None), _topo(0.010))
    assert any(n.startswith("WARNING: no clock measurement for b") for n in notes), notes


def test_report_clock_notes_for_one_kernel_and_old_runs():
    topo = _topo(0.001)
    one = clock_notes({"clocks": clocks.one_kernel(["a", "b"], 1.0, 2.0)}, topo)
    assert len(one) == 1 and "one clock" in one[0] and "WARNING" not in one[0]
    assert clock_notes({}, topo) == []
