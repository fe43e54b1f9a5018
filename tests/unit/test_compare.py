"""Run statistics and the emulated-vs-simulated comparison, on known events."""
from __future__ import annotations

import json
import re

import numpy
import pytest
from hypothesis import given
from hypothesis import strategies as st

from testbed.analysis.compare import (FlowComparison, compare, delay_floor_violations,
                             format_table, plot_cdfs, relative_error, write_report)
from testbed.spec.model import Flow, LinkSpec, Topology
from testbed.analysis.stats import (FlowStats, flow_stats, load_events, load_run,
                           percentile, summary_table)


def ev(kind: str, msg: int, t: float, flow: str = "f1", **extra) -> dict:
    return {"event": kind, "flow": flow, "msg": msg, "src": "a", "dst": "b",
            "size": 100, "ensure": True, "t": t, **extra}


def run_events(latencies: dict[int, float | None], flow: str = "f1",
               t0: float = 1000.0) -> list[dict]:
    """Send msg k at t0 + k; deliver it latency later (None = lost)."""
    events = []
    for msg, lat in latencies.items():
        events.append(ev("send", msg, t0 + msg, flow))
        if lat is not None:
            events.append(ev("deliver", msg, t0 + msg + lat, flow, intact=True))
    return events


# --- percentiles --------------------------------------------------------------

@pytest.mark.parametrize("values, q, expected", [
    ([1, 2, 3, 4], 50, 2.5),
    ([1, 2, 3, 4], 95, 3.85),      # pos = 3 * 0.95 = 2.85 -> 3 + 0.85
    ([1, 2, 3, 4], 0, 1),
    ([1, 2, 3, 4], 100, 4),
    ([10], 99, 10),
    ([5, 1, 3], 50, 3),            # unsorted input
    (list(range(1, 101)), 99, 99.01),
])
def test_percentile_interpolates_linearly_between_order_statistics(values, q, expected):
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_of_nothing_is_none_and_q_out_of_range_raises():
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1], 101)


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50), st.floats(0, 100))
def test_percentile_matches_numpy_default(values, q):
    assert percentile(values, q) == pytest.approx(float(numpy.percentile(values, q)),
                                                  rel=1e-9, abs=1e-6)


# --- flow statistics ------------------------------------------------------------

def test_flow_stats_counts_sent_delivered_lost_and_latencies():
    events = run_events({0: 0.010, 1: 0.020, 2: None, 3: 0.040})
    events += [ev("complete", 0, 1000.05), ev("complete", 1, 1001.05),
               ev("fail", 2, 1012.0, reason="deadline")]
    s = flow_stats(events)["f1"]
    assert (s.sent, s.delivered, s.failed, s.completed, s.duplicates) == (4, 3, 1, 2, 0)
    assert s.delivery_ratio == 0.75
    assert s.latencies == pytest.approx([0.010, 0.020, 0.040])
    assert s.mean == pytest.approx(0.070 / 3)
    assert s.p50 == pytest.approx(0.020)
    assert s.p95 == pytest.approx(0.020 + 0.020 * 0.9)  # pos 1.9
    assert (s.src, s.dst, s.ensure) == ("a", "b", True)


def test_duplicates_count_beyond_first_and_latency_uses_earliest_delivery():
    events = run_events({0: 0.030})
    events += [ev("deliver", 0, 1000.050, intact=True),   # duplicate, later
               ev("deliver", 0, 1000.010, intact=True)]   # duplicate, earlier
    s = flow_stats(events)["f1"]
    assert (s.delivered, s.duplicates) == (1, 2)
    assert s.latencies == pytest.approx([0.010])


def test_corrupt_delivery_is_not_a_delivery():
    events = run_events({0: None}) + [ev("deliver", 0, 1000.01, intact=False)]
    s = flow_stats(events)["f1"]
    assert (s.delivered, s.corrupted, s.delivery_ratio, s.p50) == (0, 1, 0.0, None)


def test_delivery_without_logged_send_is_unmatched_and_not_in_ratio():
    events = run_events({0: 0.01}) + [ev("deliver", 9, 1005.0)]
    s = flow_stats(events)["f1"]
    assert (s.sent, s.delivered, s.unmatched, s.delivery_ratio) == (1, 2, 1, 1.0)
    assert len(s.latencies) == 1


def test_flows_are_kept_apart_and_sorted():
    stats = flow_stats(run_events({0: 0.5}, "zeta") + run_events({0: 0.1}, "alpha"))
    assert list(stats) == ["alpha", "zeta"]
    assert stats["alpha"].latencies == pytest.approx([0.1])


def test_flow_with_no_sends_has_no_ratio():
    s = flow_stats([ev("deliver", 0, 1.0)])["f1"]
    assert s.delivery_ratio is None and s.mean is None


def test_load_events_skips_and_counts_malformed_lines(tmp_path):
    good = run_events({0: 0.02, 1: 0.03})
    (tmp_path / "events-a.jsonl").write_text(
        "\n".join(json.dumps(e) for e in good[:2]) + "\n"
        + "not json\n[1, 2]\n"
        + json.dumps({"event": "send", "flow": "f1", "msg": "x", "t": 1}) + "\n"
        + json.dumps({"event": "ready", "t": 1}) + "\n\n"       # unknown kind: kept
        + '{"event": "deliver", "flow": "f1", "ms')              # truncated last line
    (tmp_path / "events-b.jsonl").write_text(
        "\n".join(json.dumps(e) for e in good[2:]) + "\n")
    (tmp_path / "meta.json").write_text("{}")
    loaded = load_run(tmp_path)
    assert loaded.malformed == 4
    assert [p.name for p in loaded.files] == ["events-a.jsonl", "events-b.jsonl"]
    events = load_events(tmp_path)
    assert len(events) == 5
    assert flow_stats(events)["f1"].latencies == pytest.approx([0.02, 0.03])


def test_summary_table_has_one_aligned_row_per_flow():
    stats = flow_stats(run_events({0: 0.010, 1: None}, "tokens"))
    table = summary_table(stats).splitlines()
    assert table[0].split()[:3] == ["flow", "link", "ensure"]
    assert table[2].split() == ["tokens", "a->b", "yes", "2", "1", "0", "0", "0",
                                "0.500", "10.00", "10.00", "10.00", "10.00"]


# --- comparison ---------------------------------------------------------------

def test_relative_error_is_sim_minus_emu_over_emu():
    assert relative_error(0.020, 0.021) == pytest.approx(0.05)
    assert relative_error(0.020, 0.019) == pytest.approx(-0.05)
    assert relative_error(0, 1) is None and relative_error(None, 1) is None


def known_rows() -> list[FlowComparison]:
    emu = run_events({0: 0.010, 1: 0.020, 2: 0.030, 3: None})
    sim = run_events({0: 0.011, 1: 0.022, 2: 0.033, 3: 0.044})
    return compare(emu, sim)


def test_compare_reports_each_metric_and_its_relative_error():
    [row] = known_rows()
    assert row.flow == "f1"
    assert row.emu.delivery_ratio == 0.75 and row.sim.delivery_ratio == 1.0
    assert row.delivery_ratio_error == pytest.approx(1 / 3)
    assert row.emu.p50 == pytest.approx(0.020) and row.sim.p50 == pytest.approx(0.0275)
    assert row.p50_error == pytest.approx(0.375)
    assert row.mean_error == pytest.approx((0.0275 - 0.020) / 0.020)
    assert row.p95_error == pytest.approx((0.04235 - 0.029) / 0.029)
    assert row.p99_error is not None


def test_flow_missing_on_one_side_still_gets_a_row():
    rows = compare(run_events({0: 0.01}, "only-emu"), run_events({0: 0.01}, "only-sim"))
    assert [r.flow for r in rows] == ["only-emu", "only-sim"]
    assert rows[0].sim.sent == 0 and rows[0].p50_error is None


def test_format_table_lists_every_flow_and_metric():
    text = format_table(known_rows())
    lines = text.splitlines()
    assert lines[0].split() == ["flow", "metric", "emulated", "simulated", "rel.", "error"]
    assert len(lines) == 2 + 5
    assert re.search(r"f1\s+p50 latency \(ms\)\s+20\.00\s+27\.50\s+\+37\.5%", text)
    assert re.search(r"f1\s+delivery ratio\s+0\.750\s+1\.000\s+\+33\.3%", text)
    md = format_table(known_rows(), markdown=True)
    assert "| f1 | p50 latency (ms) | 20.00 | 27.50 | +37.5% |" in md


def test_delay_floor_catches_latency_below_configured_delay():
    topo = Topology(name="t", ensembles=("a", "b"),
                    default_link=LinkSpec(delay_s=0.020, jitter_s=0.002),
                    flows=(Flow("f1", "a", "b", (100,), 2, 1.0, True),))
    assert delay_floor_violations(topo, run_events({0: 0.0185, 1: 0.025})) == []
    problems = delay_floor_violations(topo, run_events({0: 0.0005, 1: 0.025}))
    assert len(problems) == 1 and problems[0].startswith("f1: fastest emulated latency 0.50 ms")


def test_plots_and_report_are_written_with_resolving_relative_links(tmp_path):
    rows = compare(run_events({k: 0.01 * (k + 1) for k in range(20)}),
                   run_events({k: 0.011 * (k + 1) for k in range(20)}))
    run_dir = tmp_path / "results" / "pair" / "run1"
    plots = plot_cdfs(rows, run_dir / "plots", title="pair")
    assert [p.name for p in plots] == ["cdf-all.png", "cdf-flows.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    report = write_report(run_dir, rows, plots, notes=["seed 1", "netem absent"])
    assert report == run_dir / "report.md"
    text = report.read_text()
    assert "- netem absent" in text
    assert "| f1 | p50 latency (ms) |" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links == ["plots/cdf-all.png", "plots/cdf-flows.png"]
    assert all((run_dir / link).is_file() for link in links)


def test_many_flows_are_split_over_several_cdf_pages(tmp_path):
    emu, sim = [], []
    for i in range(13):
        emu += run_events({0: 0.01, 1: 0.02}, f"flow{i:02d}")
        sim += run_events({0: 0.01, 1: 0.02}, f"flow{i:02d}")
    plots = plot_cdfs(compare(emu, sim), tmp_path)
    assert [p.name for p in plots] == ["cdf-all.png", "cdf-flows-1.png", "cdf-flows-2.png"]


def test_empty_stats_are_rendered_as_dashes():
    row = FlowComparison("x", FlowStats(flow="x"), FlowStats(flow="x"))
    assert format_table([row]).splitlines()[2].split() == ["x", "delivery", "ratio", "-", "-", "-"]
