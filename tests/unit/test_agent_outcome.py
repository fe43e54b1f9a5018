"""The agent's outcome bookkeeping (its exit code) and how a run reads it."""
from __future__ import annotations

import json

from testbed.guest.agent import EXIT_OK, EXIT_UNDELIVERED, MAX_LISTED, Outcome
from testbed.spec.model import Flow, LinkSpec, Topology
from testbed.emulate.run import RunResult, _read_outcomes


def test_all_ensure_completed_and_best_effort_failures_exit_zero():
    o = Outcome()
    for k in range(3):
        o.sent("sure", k, True)
        o.sent("best", k, False)
    for k in range(3):
        o.resolved("sure", k, True)
        o.resolved("best", k, False, "deadline: no ACK_START after 1 REQ(s)")
    assert o.wait_resolved(0)
    o.freeze()
    s = o.summary("a")
    assert s["exit_code"] == EXIT_OK and s["ensure_failures"] == 0 and s["problems"] == []
    assert s["ensure"]["completed"] == 3 and s["best_effort"]["failed"] == 3
    assert (s["sent"], s["completed"], s["failed"]) == (6, 3, 3)


def test_ensure_failed_unresolved_not_sent_exit_three():
    o = Outcome()
    for k in range(3):
        o.sent("sure", k, True)
    o.resolved("sure", 0, True)
    o.resolved("sure", 1, False, "deadline")
    o.not_sent("sure", 3, True, "run end time came first")
    assert not o.wait_resolved(0)
    o.freeze()
    o.resolved("sure", 2, True)                    # after the end time: not counted
    s = o.summary("a")
    assert s["ensure"] == dict(sent=3, completed=1, failed=1, unresolved=1, not_sent=1)
    assert s["ensure_failures"] == 3 and s["exit_code"] == EXIT_UNDELIVERED
    assert [(p["msg"], p["reason"]) for p in s["problems"]] == [
        (1, "failed: deadline"), (3, "not sent: run end time came first"),
        (2, "unresolved at the end time")]


def test_best_effort_left_unsent_is_not_a_clean_run():
    o = Outcome()
    o.not_sent("best", 0, False, "run end time came first")
    o.freeze()
    assert o.ensure_failures == 0 and o.exit_code == EXIT_UNDELIVERED


def test_problem_list_is_capped():
    o = Outcome()
    for k in range(MAX_LISTED + 20):
        o.not_sent("sure", k, True, "run end time came first")
    s = o.summary("a")
    assert len(s["problems"]) == MAX_LISTED and s["ensure_failures"] == MAX_LISTED + 20


def test_run_reads_outcomes_and_counts_missing_agents(tmp_path):
    topo = Topology(name="t", ensembles=("a", "b", "c"), default_link=LinkSpec(), flows=(
        Flow("ab", "a", "b", sizes=(10,), count=4, interval_s=0.1, ensure=True),
        Flow("ba", "b", "a", sizes=(10,), count=7, interval_s=0.1, ensure=True),
        Flow("bc", "b", "c", sizes=(10,), count=9, interval_s=0.1, ensure=False)))
    (tmp_path / "outcome-a.json").write_text(json.dumps({"ensemble": "a", "ensure_failures": 2}))
    (tmp_path / "outcome-c.json").write_text("{truncated")
    outcomes = _read_outcomes(tmp_path, topo)
    assert outcomes["a"]["ensure_failures"] == 2
    assert outcomes["b"] == {"ensemble": "b", "missing": True, "ensure_failures": 7}
    assert outcomes["c"] == {"ensemble": "c", "missing": True, "ensure_failures": 0}
    res = RunResult(tmp_path, {"exit_codes": {"a": 3, "b": 1, "c": 0}, "outcomes": outcomes})
    assert res.ensure_failures == 9 and not res.ok
    clean = RunResult(tmp_path, {"exit_codes": {"a": 0}, "outcomes": {"a": {"ensure_failures": 0}}})
    assert clean.ok and clean.ensure_failures == 0
