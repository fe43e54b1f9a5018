"""The terminal (testbed.console) and the live progress of a run
(testbed.emulate.progress): counting from growing event files, rich and
plain displays, and a monitor that cannot break a run's wait."""
from __future__ import annotations

import io
import json
import logging
import threading
import time

import pytest
from rich.console import Console

from testbed.analysis.compare import FlowComparison, comparison_rows, format_table
from testbed.analysis.stats import FlowStats, Table, flow_stats, summary_rows, summary_table
from testbed.console import LiveProgress, Terminal, plain_progress_line
from testbed.emulate.progress import (EventTailer, FlowProgress, RunProgress, RunWatcher,
                                      watch)


def line(kind: str, flow: str, msg: int, **extra) -> bytes:
    rec = {"event": kind, "flow": flow, "msg": msg, "src": "a", "dst": "b", "size": 64,
           "ensure": False, "t": 1000.0 + msg, **extra}
    return (json.dumps(rec) + "\n").encode()


def append(path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)


def rich_terminal(width: int = 100) -> tuple[Terminal, io.StringIO]:
    buf = io.StringIO()
    return Terminal(console=Console(file=buf, force_terminal=True, width=width,
                                    color_system=None)), buf


class FakeClock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# --- the tailer -------------------------------------------------------------

def test_tailer_counts_across_ticks_partial_lines_and_several_files(tmp_path):
    a, b = tmp_path / "events-a.jsonl", tmp_path / "events-b.jsonl"
    tail = EventTailer(tmp_path)
    tail.poll()                                       # no files yet
    assert tail.sent("tokens") == 0 and tail.flows() == []

    sends = line("send", "tokens", 0) + line("send", "tokens", 1)
    cut = len(sends) - 7                               # the agent flushed mid-line
    append(a, sends[:cut])
    tail.poll()
    assert tail.sent("tokens") == 1

    append(a, sends[cut:] + line("send", "tokens", 1))   # a repeated send counts once
    append(b, line("deliver", "tokens", 0, intact=True)
           + line("deliver", "tokens", 0, intact=True)    # a duplicate
           + line("deliver", "tokens", 1, intact=False)   # corrupted: not delivered
           + b"not json\n" + line("deliver", "tokens", 1, intact=True)[:10])
    tail.poll()
    assert (tail.sent("tokens"), tail.delivered("tokens")) == (2, 1)
    assert tail.malformed == 1                          # the half line is not malformed yet

    append(b, line("deliver", "tokens", 1, intact=True)[10:] + line("send", "ctl", 5))
    tail.poll()
    tail.poll()                                        # nothing new: nothing changes
    assert (tail.sent("tokens"), tail.delivered("tokens")) == (2, 2)
    assert tail.sent("ctl") == 1 and tail.flows() == ["ctl", "tokens"]
    assert tail.malformed == 1


def test_tailer_reads_only_the_appended_bytes(tmp_path, monkeypatch):
    path = tmp_path / "events-a.jsonl"
    append(path, b"".join(line("send", "f", k) for k in range(100)))
    tail = EventTailer(tmp_path)
    tail.poll()
    reads: list[int] = []
    real_open = open

    class Spy:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def seek(self, *a):
            return self.fh.seek(*a)

        def read(self, n=-1):
            data = self.fh.read(n)
            reads.append(len(data))
            return data

    new = line("send", "f", 100)
    append(path, new)
    monkeypatch.setattr("testbed.emulate.progress.open", lambda *a, **k: Spy(real_open(*a, **k)),
                        raising=False)
    tail.poll()
    assert reads == [len(new)] and tail.sent("f") == 101


def test_watcher_snapshot_follows_the_plan(tmp_path):
    flows = [dict(name="tokens", src="a", dst="b", count=10),
             dict(name="control", src="b", dst="a", count=3)]
    clock = FakeClock(1012.0)
    watcher = RunWatcher(tmp_path, "pair", flows, start_at=1000.0, end_at=1045.0, clock=clock)
    append(tmp_path / "events-a.jsonl", line("send", "tokens", 0) + line("send", "tokens", 1))
    append(tmp_path / "events-b.jsonl", line("deliver", "tokens", 0, intact=True))
    p = watcher.snapshot()
    assert (p.topology, p.elapsed_s, p.planned_s, p.done) == ("pair", 12.0, 45.0, False)
    assert p.flows == (FlowProgress("tokens", "a", "b", 10, 2, 1),
                       FlowProgress("control", "b", "a", 3, 0, 0))
    assert (p.planned, p.sent, p.delivered) == (13, 2, 1)
    assert watcher.snapshot(done=True).done


# --- watch: the monitor beside the wait ----------------------------------------

def snap(done: bool = False) -> RunProgress:
    return RunProgress("t", 1.0, 2.0, (), done)


def test_a_raising_monitor_does_not_break_the_wait(caplog):
    calls: list[bool] = []

    def monitor(p: RunProgress) -> None:
        calls.append(p.done)
        raise RuntimeError("display broke")

    def wait() -> dict:
        time.sleep(0.25)
        return {"a": 0, "b": 3}

    with caplog.at_level(logging.DEBUG, logger="testbed.emulate.progress"):
        t0 = time.monotonic()
        codes = watch(wait, snap, monitor, interval_s=0.02)
    assert codes == {"a": 0, "b": 3}
    assert time.monotonic() - t0 < 2.0
    assert len(calls) >= 3 and calls[-1] is True and not any(calls[:-1])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "monitor failed" in warnings[0].getMessage()
    assert not any(t.name == "ttnet-progress" for t in threading.enumerate())


def test_a_raising_snapshot_and_a_raising_wait_pass_through_unchanged():
    def broken_snapshot(done: bool = False) -> RunProgress:
        raise OSError("results disk gone")

    assert watch(lambda: 7, broken_snapshot, lambda p: None, interval_s=0.01) == 7

    seen: list[bool] = []

    def wait() -> dict:
        time.sleep(0.05)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        watch(wait, snap, lambda p: seen.append(p.done), interval_s=0.01)
    assert seen[-1] is True      # the display is still told the run ended


# --- the plain display ---------------------------------------------------------

def progress(elapsed: float, sent: int, done: bool = False, n: int = 2) -> RunProgress:
    flows = tuple(FlowProgress(f"f{i}", "a", "b", 100, sent, max(0, sent - 1)) for i in range(n))
    return RunProgress("pair", elapsed, 40.0, flows, done)


def test_plain_display_prints_a_line_every_ten_seconds():
    out, clock = io.StringIO(), FakeClock()
    term = Terminal(file=out, clock=clock)
    assert not term.use_rich()
    monitor = term.live_progress()
    for tick in range(50):                # 25 s of half-second ticks
        clock.t = tick * 0.5
        monitor(progress(tick * 0.5, tick))
    monitor(progress(25.2, 50, done=True))
    lines = out.getvalue().splitlines()
    assert lines == [
        "[pair] 0s/40s: f0 0/100 sent 0 delivered; f1 0/100 sent 0 delivered",
        "[pair] 10s/40s: f0 20/100 sent 19 delivered; f1 20/100 sent 19 delivered",
        "[pair] 20s/40s: f0 40/100 sent 39 delivered; f1 40/100 sent 39 delivered",
        "[pair] done 25s/40s: f0 50/100 sent 49 delivered; f1 50/100 sent 49 delivered",
    ]


def test_plain_line_is_shortened_for_many_flows():
    p = RunProgress("mesh-20", -0.4, 40.0,
                    tuple(FlowProgress(f"f{i}", "a", "b", 10, 10 if i < 3 else 2, 1)
                          for i in range(60)))
    assert plain_progress_line(p) == (
        "[mesh-20] 0s/40s: 60 flows 144/600 sent 60 delivered, 3 done sending")


def test_plain_tables_are_the_analysis_text():
    stats = flow_stats([json.loads(line("send", "tokens", 0)),
                        json.loads(line("deliver", "tokens", 0, intact=True))])
    out = io.StringIO()
    Terminal(file=out).print_table(summary_rows(stats))
    assert out.getvalue() == summary_table(stats) + "\n"
    rows = [FlowComparison("x", FlowStats(flow="x"), FlowStats(flow="x"))]
    out = io.StringIO()
    Terminal(file=out).print_table(comparison_rows(rows, title="pair: emulated vs simulated"))
    assert out.getvalue() == "pair: emulated vs simulated\n" + format_table(rows) + "\n"


def test_table_checks_its_shape():
    with pytest.raises(ValueError):
        Table(["a", "b"], [["1"]])
    with pytest.raises(ValueError):
        Table(["a"], [["1"]], align=("centre",))
    assert Table(["a", "b"], [["1", "2"]], align=("right", "left")).text().splitlines() == \
        ["a  b", "-  -", "1  2"]


def test_plain_say_is_timestamped(monkeypatch):
    out = io.StringIO()
    Terminal(file=out).say("[pair] up")
    stamp, msg = out.getvalue().rstrip("\n").split(" ", 1)
    assert msg == "[pair] up" and len(stamp) == 8 and stamp.count(":") == 2


def test_default_terminal_is_plain_without_a_tty(monkeypatch, capsys):
    import testbed.console as console
    console.say("hello [bold]world[/bold]")
    console.print_table(Table(["flow", "n"], [["f1", "3"]]))
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(" hello [bold]world[/bold]")
    assert out[1:] == ["flow  n", "----  -", "f1    3"]
    monkeypatch.setenv("TTNET_CONSOLE", "plain")
    assert not Terminal().use_rich()


# --- the rich display ----------------------------------------------------------

def test_rich_table_and_say_render():
    term, buf = rich_terminal()
    assert term.use_rich()
    term.print_table(Table(["flow", "metric", "emulated"], [["f1", "p50 latency (ms)", "20.00"]],
                           title="pair: emulated vs simulated"))
    term.say("literal [brackets] stay")
    text = buf.getvalue()
    assert "pair: emulated vs simulated" in text
    assert "p50 latency (ms)" in text and "20.00" in text
    assert "literal [brackets] stay" in text


def test_rich_live_display_updates_and_stops_when_done():
    term, buf = rich_terminal()
    monitor = LiveProgress(term)
    monitor(progress(3.0, 10))
    assert monitor._live is not None
    monitor(progress(12.0, 30))
    monitor(progress(41.0, 100, done=True))
    assert monitor._live is None
    text = buf.getvalue()
    assert "[pair] running 3s / 40s planned" in text
    assert "done in 41s / 40s planned" in text
    assert "30/100" in text and "100/100" in text and "2 flows" in text
    # The next run gets a display of its own; closing twice is harmless.
    with monitor:
        monitor(progress(1.0, 1))
    assert monitor._live is None
    monitor.close()


def test_rich_live_display_caps_its_rows():
    term, buf = rich_terminal(width=120)
    monitor = LiveProgress(term, max_rows=5)
    monitor(progress(1.0, 1, done=True, n=60))
    text = buf.getvalue()
    assert "f3" in text and "f4 " not in text and "... 56 more" in text
    assert "60 flows" in text
