"""The one event schema (testbed.spec.events): the records both the agent and
the simulator write, and the reader the analysis uses."""
from __future__ import annotations

import gzip
import threading

from testbed.spec.events import (Complete, Deliver, EventFile, Fail, MessageRef, Send, Unknown,
                                 load_run, valid_record)

REF = MessageRef("ab", 3, "a", "b", 1000, True)
COMMON = ["event", "flow", "msg", "src", "dst", "size", "ensure", "t"]


def test_each_kind_has_exactly_the_documented_keys():
    assert list(Send(REF, 1.0).record()) == COMMON
    assert list(Complete(REF, 1.0).record()) == COMMON
    assert list(Fail(REF, 1.0, "deadline").record()) == COMMON + ["reason"]
    assert list(Deliver(REF, size=999, t=1.0, intact=False).record()) == COMMON + ["intact"]
    assert list(Unknown("a", "b", 5, 1.0).record()) == ["event", "src", "dst", "size", "t"]


def test_deliver_records_the_received_size_not_the_planned_one():
    d = Deliver(REF, size=999, t=2.5, intact=False).record()
    assert (d["event"], d["size"], d["t"], d["intact"]) == ("deliver", 999, 2.5, False)


def test_planned_ref_cycles_sizes():
    flow = dict(name="f", src="a", dst="b", sizes=[10, 20, 30], ensure=False)
    assert [MessageRef.planned(flow, k).size for k in range(5)] == [10, 20, 30, 10, 20]


def test_event_file_from_many_threads_reads_back_whole(tmp_path):
    f = EventFile(tmp_path / "events-a.jsonl")

    def writer(i):
        for k in range(200):
            f.write(Send(MessageRef(f"f{i}", k, "a", "b", 1, False), float(k)))
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    f.close()
    loaded = load_run(tmp_path)
    assert loaded.malformed == 0 and len(loaded.events) == 800
    assert {(e["flow"], e["msg"]) for e in loaded.events} == {
        (f"f{i}", k) for i in range(4) for k in range(200)}


def test_reader_skips_and_counts_bad_lines_including_gzip(tmp_path):
    good = '{"event":"send","flow":"f","msg":1,"t":0.5}'
    (tmp_path / "events-a.jsonl").write_text(
        good + "\n{not json\n" + '{"event":"send","flow":"f","msg":true,"t":1}\n'
        + '{"event":"deliver","flow":"f","msg":1,"t":"NaN"}\n\n')
    with gzip.open(tmp_path / "events-b.jsonl.gz", "wt") as fh:
        fh.write(good + "\n[1, 2]\n")
    loaded = load_run(tmp_path)
    assert len(loaded.events) == 2 and loaded.malformed == 4


def test_valid_record_keeps_other_kinds_but_rejects_non_finite_times():
    assert valid_record({"event": "unknown", "src": "x"})
    assert not valid_record({"event": "send", "flow": "f", "msg": 1, "t": float("inf")})
    assert not valid_record({"flow": "f"})
