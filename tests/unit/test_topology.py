"""Topology files: units, validation messages, warnings, round trip, shipped files."""
from __future__ import annotations

import keyword
import logging
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.spec.model import EnsembleSettings, Flow, LinkSpec, Topology
from testbed.spec.topology import (TopologyError, check_topology, check_topology_text,
                                   find_topology, list_topologies, load_topology,
                                   load_topology_text, scan_topologies, topology_to_yaml)
from testbed.spec.units import (UnitError, format_duration, format_rate, format_size,
                                parse_duration, parse_percent, parse_rate, parse_size,
                                percent_note)

REPO = Path(__file__).resolve().parents[2]
TOPO_DIR = REPO / "testbed" / "topologies"

BASE = """
ensembles: [a, b, c]
defaults: {delay: 20ms, loss: 2%}
links:
  a->b: {loss: 5%}
flows:
  - {name: f1, from: a, to: b, size: 1200, count: 50, interval: 100ms}
"""


def load(text: str, base_dir: str | Path | None = None) -> Topology:
    return load_topology_text(textwrap.dedent(text), "test.yaml", base_dir=base_dir)


def error_for(text: str, base_dir: str | Path | None = None) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        load(text, base_dir)
    return info.value


# --- units ------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("20ms", 0.02), ("1.5s", 1.5), ("500us", 0.0005), ("500µs", 0.0005),
    ("2min", 120.0), (0, 0.0), ("0", 0.0), ("20 ms", 0.02), ("1.5MS", 0.0015),
])
def test_duration_units_convert_to_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text, fraction", [("2%", 0.02), ("0.1%", 0.001),
                                            (2, 0.02), ("100%", 1.0), ("0%", 0.0)])
def test_percentages_become_fractions(text, fraction):
    assert parse_percent(text) == fraction


@pytest.mark.parametrize("text, bps", [("10mbit", 10e6), ("1gbit", 1e9),
                                       ("200kbit", 200e3), ("10Mbit", 10e6),
                                       ("64bit", 64.0), ("10mbit/s", 10e6),
                                       (None, None), ("unlimited", None)])
def test_rates_are_decimal_bits_per_second(text, bps):
    assert parse_rate(text) == bps


@pytest.mark.parametrize("text, size", [(1200, 1200), ("200KB", 200_000),
                                        ("200KiB", 204_800), ("3MB", 3_000_000),
                                        ("1MiB", 1_048_576), ("1.5KB", 1500),
                                        ("64B", 64), ("200kb", 200_000)])
def test_sizes_kb_is_1000_and_kib_is_1024(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("parser, text, hint", [
    (parse_duration, "20", "no unit"), (parse_duration, "20 fortnights", "unknown"),
    (parse_percent, "2x", "unknown"), (parse_percent, "101%", "outside"),
    (parse_rate, "10mbps", "ambiguous"), (parse_rate, "10", "no unit"),
    (parse_rate, "0mbit", "not positive"), (parse_size, "1.5B", "whole number"),
    (parse_size, "3 parsecs", "unknown"), (parse_duration, True, "boolean"),
    (parse_duration, float("inf"), "finite"), (parse_percent, float("nan"), "finite"),
])
def test_bad_units_are_refused_with_a_fix(parser, text, hint):
    with pytest.raises(UnitError) as info:
        parser(text)
    assert hint in str(info.value) and "Fix:" in str(info.value)


def test_formatting_prefers_readable_units():
    assert format_duration(0.02) == "20ms"
    assert format_duration(1.5) == "1.5s"
    assert format_duration(0.5) == "500ms"
    assert format_rate(10e6) == "10mbit"
    assert format_size(200_000) == "200KB"
    assert format_size(262_144) == "256KiB"
    assert format_size(1200) == 1200


@given(st.floats(min_value=0, max_value=1e4, allow_nan=False))
def test_any_duration_survives_format_then_parse(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


# --- loading ----------------------------------------------------------------

def test_valid_file_loads_into_model_types():
    t = load(BASE)
    assert t.name == "test"  # default name is the file stem
    assert t.ensembles == ("a", "b", "c")
    assert t.default_link == LinkSpec(delay_s=0.02, loss=0.02)
    # The override keeps the default delay and replaces only the loss.
    assert t.link("a", "b") == LinkSpec(delay_s=0.02, loss=0.05)
    assert t.link("b", "a") == t.default_link
    assert t.flows == (Flow(name="f1", src="a", dst="b", sizes=(1200,), count=50,
                            interval_s=0.1, ensure=False),)


def test_symmetric_link_sets_both_directions_and_one_way_refines_it():
    t = load("""
        ensembles: [a, b]
        links:
          a<->b: {delay: 40ms, rate: 10mbit}
          b->a: {loss: 1%}
        flows: []
    """)
    assert t.link("a", "b") == LinkSpec(delay_s=0.04, rate_bps=10e6)
    assert t.link("b", "a") == LinkSpec(delay_s=0.04, rate_bps=10e6, loss=0.01)


def test_unnamed_flows_get_unique_names_from_their_endpoints():
    t = load("""
        ensembles: [a, b]
        flows:
          - {from: a, to: b, size: 10, count: 1, interval: 0}
          - {from: a, to: b, sizes: [10, 20], count: 2, interval: 1s, ensure: true,
             deadline: 5s, start: 2s}
    """)
    assert [f.name for f in t.flows] == ["a-b", "a-b-2"]
    assert t.flows[1].sizes == (10, 20) and t.flows[1].deadline_s == 5.0
    assert t.flows[1].start_s == 2.0 and t.flows[1].ensure is True


def test_seed_auth_key_and_description_are_read():
    t = load("ensembles: [a]\nseed: 7\nauth_key: s3cret\ndescription: hello\n")
    assert (t.seed, t.auth_key, t.description) == (7, "s3cret", "hello")


# BASE, line by line (1-based; line 1 is empty):
#   2 ensembles: [a, b, c]
#   3 defaults: {delay: 20ms, loss: 2%}
#   5   a->b: {loss: 5%}
#   7   - {name: f1, from: a, to: b, size: 1200, count: 50, interval: 100ms}
@pytest.mark.parametrize("change, entry, fix_hint, line, column", [
    (("a->b: {loss: 5%}", "a->x: {loss: 5%}"), "links['a->x']", "add it to ensembles", 5, 3),
    (("from: a, to: b", "from: a, to: zz"), "flows[0] (f1).to", "add it to ensembles", 7, 29),
    (("delay: 20ms", "delay: -5ms"), "defaults.delay", ">= 0", 3, 19),
    (("a->b: {loss: 5%}", "a->b: {loss: 150%}"), "links['a->b'].loss",
     "between 0% and 100%", 5, 16),
    (("delay: 20ms", "delay: 20 parsecs"), "defaults.delay", "use one of", 3, 19),
    (("delay: 20ms", "delay: 20ms, latency: 3ms"), "defaults.latency", "remove it", 3, 25),
    (("count: 50, ", ""), "flows[0] (f1).count", "add 'count:'", 7, 5),
    (("[a, b, c]", "[a, b, a]"), "ensembles[2]", "different name", 2, 19),
    (("from: a, to: b", "from: a, to: a"), "flows[0] (f1)", "different ensemble", 7, 29),
    (("count: 50", "count: 0"), "flows[0] (f1).count", "integer >= 1", 7, 51),
    (("size: 1200", "size: 65MiB"), "flows[0] (f1).size", "smaller messages", 7, 38),
    (("size: 1200", "size: 1200, sizes: [1]"), "flows[0] (f1).size", "or sizes:", 7, 44),
    (("interval: 100ms", "interval: 100"), "flows[0] (f1).interval", "100ms", 7, 65),
    (("ensembles:", "ensemble:"), "ensemble", "remove it", 2, 1),
    (("a->b:", "a=>b:"), "links['a=>b']", "'a->b'", 5, 3),
    (("interval: 100ms", "interval: 100ms, deadline: 0s"), "flows[0] (f1).deadline",
     "deadline > 0", 7, 82),
    (("[a, b, c]", "[a, b, 'no']"), "", "", 0, 0),  # quoted: fine, must not raise
])
def test_bad_entries_name_file_line_entry_and_fix(change, entry, fix_hint, line, column):
    text = BASE.replace(*change)
    assert text != BASE
    if not entry:
        load(text)
        return
    err = error_for(text)
    message = str(err)
    assert (err.line, err.column) == (line, column), message
    assert message.startswith(f"test.yaml:{line}:{column}: {entry}: "), message
    assert err.entry == entry, message
    assert fix_hint in err.fix, message
    assert "\n" not in message


def test_yaml_booleans_as_ensemble_names_are_refused_with_quote_hint():
    err = error_for(BASE.replace("[a, b, c]", "[a, b, no]"))
    assert err.entry == "ensembles[2]" and "quote" in err.fix


@pytest.mark.parametrize("change, entry, written", [
    (("[a, b, c]", "[a, b, no]"), "ensembles[2]", "no"),
    (("[a, b, c]", "[a, b, On]"), "ensembles[2]", "On"),
    (("name: f1", "name: yes"), "flows[0] (yes).name", "yes"),
    (("name: f1", "name: 007"), "flows[0] (007).name", "007"),
    (("ensembles:", "name: off\nensembles:"), "name", "off"),
    (("ensembles:", "auth_key: no\nensembles:"), "auth_key", "no"),
])
def test_words_yaml_reads_as_non_strings_are_quoted_as_written(change, entry, written):
    err = error_for(BASE.replace(*change))
    assert err.entry == entry, str(err)
    assert f"quote it: '{written}'" in err.fix, str(err)
    assert "False" not in err.fix and "True" not in err.fix
    assert f"reads {written} as" in err.problem


def test_an_unquoted_word_naming_a_quoted_ensemble_gets_the_quote_hint():
    err = error_for("""
        ensembles: [a, 'no']
        flows: [{from: a, to: no, size: 1, count: 1, interval: 0}]
    """)
    assert err.entry == "flows[0].to" and (err.line, err.column) == (3, 23)
    assert err.fix == "quote it: 'no'", str(err)


def test_yaml_syntax_errors_name_the_file_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nensembles: [a, b\nflows: []\n")
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    message = str(info.value)
    assert "<unicode string>" not in message
    assert message.startswith(f"{path}:3:6: not valid YAML: "), message
    assert "line 2, column 12" in message      # where the unclosed '[' opened
    assert (info.value.line, info.value.column) == (3, 6)
    assert "\n" not in message


@pytest.mark.parametrize("text, line, column, hint", [
    ("ensembles: [a, b]\n  seed: 1\n", 2, 3, "while parsing a block mapping started at line 1"),
    ("ensembles: [a, b]\nlinks:\n  a->b: {}\n  a->b: {}\n", 4, 3, "duplicate key 'a->b'"),
    ("ensembles: [a, b]\ndescription: \x07\n", 2, 14, "special characters"),
    ("ensembles: [a, b]\n---\nseed: 2\n", 2, 1, "single document"),
])
def test_other_yaml_errors_point_into_the_file(text, line, column, hint):
    with pytest.raises(TopologyError) as info:
        load_topology_text(text, "t.yaml")
    assert (info.value.line, info.value.column) == (line, column), str(info.value)
    assert str(info.value).startswith(f"t.yaml:{line}:{column}: ")
    assert hint in str(info.value) and "<unicode string>" not in str(info.value)


def test_an_empty_or_non_utf8_file_is_a_topology_error(tmp_path):
    assert "empty" in str(error_for(""))
    path = tmp_path / "latin1.yaml"
    path.write_bytes("description: caf\xe9\nensembles: [a, b]\n".encode("latin-1"))
    with pytest.raises(TopologyError, match="UTF-8"):
        load_topology(path)


# --- warnings ---------------------------------------------------------------

def warnings_for(text: str) -> list[str]:
    _, warnings = check_topology_text(textwrap.dedent(text), "test.yaml")
    return [str(w) for w in warnings]


def test_a_clean_file_has_no_warnings():
    assert warnings_for(BASE) == []


@pytest.mark.parametrize("written, fraction", [("0.02", 0.0002), ("1", 0.01),
                                               ("'0.5'", 0.005)])
def test_bare_fraction_as_loss_is_read_as_percent_with_a_warning(written, fraction):
    text = BASE.replace("loss: 2%", f"loss: {written}")
    t, warnings = check_topology_text(textwrap.dedent(text), "test.yaml")
    assert t.default_link.loss == fraction            # percent, as documented
    [warning] = warnings
    shown = written.strip("'")
    assert (warning.line, warning.column) == (3, 31)
    assert str(warning).startswith("test.yaml:3:31: defaults.loss: ")
    assert f"read as {shown}%" in warning.problem
    assert f"{shown}%" in warning.fix and f"{float(shown) * 100:g}%" in warning.fix


@pytest.mark.parametrize("key, column", [("duplicate", 21), ("corrupt", 19)])
def test_bare_fraction_warns_for_every_percentage(key, column):
    [warning] = warnings_for(BASE.replace("a->b: {loss: 5%}", f"a->b: {{{key}: 0.1}}"))
    assert warning.startswith(f"test.yaml:5:{column}: links['a->b'].{key}: 0.1 ")


@pytest.mark.parametrize("value", ["2", "0", "2%", "0.5%", "100%"])
def test_unambiguous_percentages_do_not_warn(value):
    assert percent_note(value) is None
    assert warnings_for(BASE.replace("loss: 2%", f"loss: {value}")) == []


def test_jitter_larger_than_delay_warns_where_it_is_set():
    warnings = warnings_for("""
        ensembles: [a, b]
        defaults: {delay: 1ms, jitter: 5ms}
        links:
          a<->b: {loss: 1%}
          b->a: {delay: 10ms}
        flows: [{from: a, to: b, size: 1, count: 1, interval: 0}]
    """)
    # defaults warns; a<->b inherits without naming delay/jitter; b->a fixes it.
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("test.yaml:3:11: defaults: jitter 5ms is larger "
                                  "than delay 1ms")


def test_jitter_in_a_link_entry_warns_at_that_entry():
    [warning] = warnings_for(BASE.replace("a->b: {loss: 5%}", "a->b: {jitter: 30ms}"))
    assert warning.startswith("test.yaml:5:9: links['a->b']: jitter 30ms")


def test_one_ensemble_and_no_flows_warn():
    warnings = warnings_for("ensembles: [solo]\nflows: []\n")
    assert warnings[0].startswith("test.yaml:1:12: ensembles: only one ensemble")
    assert warnings[1].startswith("test.yaml:2:8: flows: no flows")
    assert len(warnings) == 2
    assert warnings_for("ensembles: [a, b]\n")[0].startswith("test.yaml:1:1: flows: no flows")


def test_load_logs_warnings_and_check_returns_them(tmp_path, caplog):
    path = tmp_path / "w.yaml"
    path.write_text("ensembles: [a, b]\ndefaults: {loss: 0.02}\n")
    with caplog.at_level(logging.WARNING, logger="testbed.spec.topology"):
        load_topology(path)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(logged) == 2 and logged[0].startswith(f"{path}:2:18: defaults.loss: ")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="testbed.spec.topology"):
        _, warnings = check_topology(path)
    assert [str(w) for w in warnings] == logged and caplog.records == []


# --- ensemble settings: run, app, duration ---------------------------------

PROGRAMS = """
ensembles:
  sensor: {run: python3 sensor.py --rate 10}
  edge: {app: apps/pipeline.py:edge}
  cloud: {}
  store:
duration: 30s
"""


def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "pipeline.py").write_text("def edge(node):\n    pass\n")
    return tmp_path


def test_mapping_form_reads_settings_and_duration():
    t = load(PROGRAMS)
    assert t.ensembles == ("sensor", "edge", "cloud", "store")
    assert t.settings == {"sensor": EnsembleSettings(run="python3 sensor.py --rate 10"),
                          "edge": EnsembleSettings(app="apps/pipeline.py:edge")}
    assert t.programs == {"sensor": "python3 sensor.py --rate 10"}
    assert t.apps["edge"].app_path == "apps/pipeline.py"
    assert t.apps["edge"].app_function == "edge"
    assert t.settings_of("cloud") == t.settings_of("store") == EnsembleSettings()
    assert t.duration_s == 30.0 and t.base_dir is None


def test_run_and_app_together_and_app_without_function(tmp_path):
    t = load("""
        ensembles:
          a: {run: ./start.sh, app: apps/pipeline.py}
          b: {}
        duration: 1.5min
    """, app_dir(tmp_path))
    assert t.settings == {"a": EnsembleSettings(run="./start.sh", app="apps/pipeline.py")}
    assert t.settings["a"].app_function == "main"
    assert t.duration_s == 90.0 and t.base_dir == str(tmp_path)


def test_list_form_is_unchanged_and_duration_alone_is_allowed():
    t = load(BASE)
    assert t.settings == {} and t.duration_s is None
    t = load(BASE + "duration: 10s\n")
    assert t.settings == {} and t.duration_s == 10.0
    assert load("ensembles: {a: {}, b: }\n").ensembles == ("a", "b")


def test_check_topology_sets_base_dir_to_the_files_directory(tmp_path):
    path = app_dir(tmp_path) / "p.yaml"
    path.write_text(textwrap.dedent(PROGRAMS))
    t, warnings = check_topology(path)
    assert t.base_dir == str(tmp_path.resolve())
    assert load_topology(path).base_dir == str(tmp_path.resolve())
    assert warnings == []
    # base_dir is not part of the identity: the same file elsewhere is equal.
    assert t == load_topology_text(textwrap.dedent(PROGRAMS), "p.yaml")
    assert load_topology_text(BASE, "b.yaml", base_dir=tmp_path).base_dir == str(tmp_path)


# PROGRAMS, line by line (1-based; line 1 is empty):
#   3   sensor: {run: python3 sensor.py --rate 10}
#   4   edge: {app: apps/pipeline.py:edge}
@pytest.mark.parametrize("change, entry, fix_hint, line, column", [
    (("{run: python3", "{runn: python3"), "ensembles['sensor'].runn", "app, cpus, memory, placement, run",
     3, 12),
    (("edge: {app:", "edge: {main: x.py, app:"), "ensembles['edge'].main", "remove it", 4, 10),
    (("run: python3 sensor.py --rate 10", "run: ''"), "ensembles['sensor'].run",
     "run: python3", 3, 17),
    (("run: python3 sensor.py --rate 10", "run: '  '"), "ensembles['sensor'].run",
     "run: python3", 3, 17),
    (("run: python3 sensor.py --rate 10", "run:"), "ensembles['sensor'].run",
     "run: python3", 3, 16),
    (("run: python3 sensor.py --rate 10", "run: yes"), "ensembles['sensor'].run",
     "quote it: 'yes'", 3, 17),
    (("apps/pipeline.py:edge", "apps/pipeline.txt"), "ensembles['edge'].app",
     "Python file", 4, 15),
    (("apps/pipeline.py:edge", "apps/pipeline:edge"), "ensembles['edge'].app",
     "Python file", 4, 15),
    (("apps/pipeline.py:edge", "apps/pipeline.py:1edge"), "ensembles['edge'].app",
     "function", 4, 15),
    (("apps/pipeline.py:edge", "'apps/pipeline.py:'"), "ensembles['edge'].app",
     "function", 4, 15),
    (("apps/pipeline.py:edge", "apps/pipeline.py:class"), "ensembles['edge'].app",
     "function", 4, 15),
    (("apps/pipeline.py:edge", "/abs/pipeline.py"), "ensembles['edge'].app",
     "relative", 4, 15),
    (("edge: {app: apps/pipeline.py:edge}", "edge: python3 edge.py"), "ensembles['edge']",
     "{run: python3", 4, 9),
    (("cloud: {}", "1cloud: {}"), "ensembles['1cloud']", "start with a letter", 5, 3),
    (("cloud: {}", "no: {}"), "ensembles['no']", "quote it: 'no'", 5, 3),
    (("duration: 30s", "duration: 0s"), "duration", "duration > 0", 7, 11),
    (("duration: 30s", "duration: 30"), "duration", "30s", 7, 11),
    (("duration: 30s", ""), "ensembles", "duration: 30s", 2, 1),
])
def test_bad_settings_name_file_line_entry_and_fix(change, entry, fix_hint, line, column):
    text = PROGRAMS.replace(*change)
    assert text != PROGRAMS
    err = error_for(text)
    message = str(err)
    assert (err.line, err.column) == (line, column), message
    assert message.startswith(f"test.yaml:{line}:{column}: {entry}: "), message
    assert err.entry == entry, message
    assert fix_hint in err.fix, message
    assert "\n" not in message


def test_programs_without_duration_name_them():
    err = error_for(PROGRAMS.replace("duration: 30s", ""))
    assert err.problem == "ensembles with run: or app: need duration: (sensor, edge)"
    assert err.fix.startswith("add e.g. duration: 30s")


def test_an_app_file_must_exist_when_the_directory_is_known(tmp_path):
    load(PROGRAMS)                     # no base_dir: not checked
    load(PROGRAMS, app_dir(tmp_path))  # exists
    err = error_for(PROGRAMS.replace("pipeline.py:edge", "missing.py:edge"), tmp_path)
    assert err.entry == "ensembles['edge'].app" and (err.line, err.column) == (4, 15)
    assert err.problem == f"app file 'apps/missing.py' not found in {tmp_path}"
    assert "relative to the topology file's directory" in err.fix
    err = error_for(PROGRAMS.replace("apps/pipeline.py:edge", "apps"), tmp_path)
    assert "does not end in .py" in err.problem      # a directory is no app
    path = tmp_path / "sub" / "p.yaml"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(PROGRAMS))
    with pytest.raises(TopologyError, match="not found in"):
        check_topology(path)                          # relative to the file, not cwd


def test_empty_ensembles_mapping_and_duplicate_keys_are_refused():
    err = error_for("ensembles: {}\n")
    assert err.entry == "ensembles" and "non-empty list or mapping" in err.problem
    err = error_for("ensembles:\n  a: {run: x}\n  a: {}\nduration: 1s\n")
    assert "duplicate key 'a'" in err.problem and (err.line, err.column) == (3, 3)


def test_programs_without_flows_do_not_warn_but_a_bare_mapping_does():
    assert warnings_for(PROGRAMS) == []
    assert warnings_for(PROGRAMS + "flows: []\n") == []
    [warning] = warnings_for("ensembles: {a: {}, b: }\nduration: 5s\n")
    assert warning.startswith("test.yaml:1:1: flows: no flows")


def test_round_trip_keeps_settings_duration_and_the_list_form(tmp_path):
    t = load(PROGRAMS + "flows: [{from: sensor, to: edge, size: 10, count: 1, interval: 0}]",
             app_dir(tmp_path))
    text = topology_to_yaml(t)
    assert "sensor: {run: python3 sensor.py --rate 10}" in text
    assert "cloud: {}" in text and "duration: 30s" in text
    back = load_topology_text(text, "other.yaml", base_dir=t.base_dir)
    assert back == t and back.base_dir == t.base_dir
    plain = load(BASE + "duration: 2s\n")
    assert "ensembles: [a, b, c]" in topology_to_yaml(plain)
    assert load_topology_text(topology_to_yaml(plain), "x.yaml") == plain
    assert "duration" not in topology_to_yaml(load(BASE))


# --- listing ----------------------------------------------------------------

def test_scan_lists_valid_files_and_one_error_per_invalid_file(tmp_path):
    (tmp_path / "good.yaml").write_text(BASE)
    (tmp_path / "bad.yaml").write_text("ensembles: [a, b\n")
    (tmp_path / "worse.yml").write_text("ensembles: [a]\nflows: [{from: a, to: z}]\n")
    (tmp_path / "warned.yaml").write_text("ensembles: [a, b]\n")
    (tmp_path / "notes.txt").write_text("not a topology")
    scanned = {s.name: s for s in scan_topologies(tmp_path)}
    assert list(scanned) == ["bad", "good", "warned", "worse"]
    assert scanned["good"].topology == load_topology(tmp_path / "good.yaml")
    assert scanned["good"].error is None and scanned["good"].warnings == ()
    assert scanned["bad"].topology is None
    assert str(scanned["bad"].error).startswith(f"{tmp_path / 'bad.yaml'}:2:1: ")
    assert scanned["worse"].path == tmp_path / "worse.yml"
    assert "\n" not in str(scanned["worse"].error)
    assert [w.entry for w in scanned["warned"].warnings] == ["flows"]
    assert scan_topologies(tmp_path / "missing") == []


def test_duplicate_yaml_keys_are_an_error_not_silently_merged():
    err = error_for(BASE.replace("a->b: {loss: 5%}", "a->b: {loss: 5%}\n  a->b: {loss: 1%}"))
    assert "duplicate key" in str(err)


def test_same_link_twice_in_both_symmetric_spellings_is_refused():
    err = error_for("""
        ensembles: [a, b]
        links: {a<->b: {delay: 1ms}, b<->a: {delay: 2ms}}
    """)
    assert err.entry == "links['b<->a']"


def test_duplicate_flow_names_are_refused():
    err = error_for(BASE + "  - {name: f1, from: b, to: a, size: 1, count: 1, interval: 0}\n")
    assert err.entry == "flows[1].name"


def test_missing_ensembles_and_broken_yaml_are_reported():
    err = error_for("flows: []\n")
    assert err.entry == "ensembles" and (err.line, err.column) == (1, 1)
    assert "not valid YAML" in str(error_for("ensembles: [a, b\n"))


def test_unreadable_file_raises_topology_error(tmp_path):
    with pytest.raises(TopologyError, match="cannot read"):
        load_topology(tmp_path / "nope.yaml")


# --- round trip -------------------------------------------------------------

def test_round_trip_keeps_every_field_and_writes_symmetric_links_once():
    t = load("""
        name: rt
        description: round trip
        seed: 9
        auth_key: k
        ensembles: [a, b, c]
        defaults: {delay: 2ms, loss: 0.1%, rate: 100mbit}
        links:
          a<->b: {delay: 40ms, jitter: 5ms, loss: 2%, rate: 10mbit, duplicate: 1%, corrupt: 0.5%}
          b->c: {loss: 0%}
        flows:
          - {name: big, from: a, to: b, size: 200KB, count: 40, interval: 500ms,
             ensure: true, deadline: 15s, start: 250ms}
          - {from: c, to: a, sizes: [64, 128, 256KiB], count: 3, interval: 1.5s}
    """)
    text = topology_to_yaml(t)
    assert "a<->b" in text and "b->a" not in text
    assert load_topology_text(text, "other.yaml") == t


link_values = st.builds(
    LinkSpec,
    delay_s=st.floats(0, 2, allow_nan=False), jitter_s=st.floats(0, 0.1),
    loss=st.floats(0, 1), rate_bps=st.none() | st.integers(1, 10**10).map(float),
    duplicate=st.floats(0, 1), corrupt=st.floats(0, 1))


@settings(max_examples=60)
@given(default=link_values, ab=link_values, ba=link_values,
       sizes=st.lists(st.integers(1, 64 * 2**20), min_size=1, max_size=3),
       interval=st.floats(0, 100), count=st.integers(1, 10**6))
def test_any_valid_topology_survives_yaml_round_trip(default, ab, ba, sizes,
                                                     interval, count):
    t = Topology(name="h", ensembles=("a", "b"), default_link=default,
                 links={("a", "b"): ab, ("b", "a"): ba},
                 flows=(Flow("f", "a", "b", tuple(sizes), count, interval, True),))
    assert load_topology_text(topology_to_yaml(t), "h.yaml") == t


app_names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
settings_values = st.builds(
    EnsembleSettings,
    run=st.none() | st.text(st.characters(exclude_categories=("Cs",)), min_size=1
                            ).filter(str.strip),
    app=st.none() | st.builds(
        lambda dirs, name, function: "/".join([*dirs, f"{name}.py"]) + (
            f":{function}" if function else ""),
        st.lists(app_names | st.just(".."), max_size=2), app_names,
        st.none() | app_names.filter(lambda n: not keyword.iskeyword(n))))


@settings(max_examples=100)
@given(chosen=st.dictionaries(st.sampled_from(["a", "b", "c"]), settings_values),
       duration=st.floats(0, 1e4, exclude_min=True), list_form=st.booleans())
def test_any_settings_and_duration_survive_yaml_round_trip(chosen, duration, list_form):
    chosen = {n: s for n, s in chosen.items() if s.run is not None or s.app is not None}
    t = Topology(name="h", ensembles=("a", "b", "c"), default_link=LinkSpec(),
                 settings={} if list_form else chosen,
                 duration_s=duration if chosen or list_form else None)
    assert load_topology_text(topology_to_yaml(t), "h.yaml", base_dir=t.base_dir) == t


# --- shipped files ----------------------------------------------------------

SHIPPED = ["devices", "edge-cloud", "lossy", "mesh-20", "pair", "star"]


def test_shipped_topologies_are_listed():
    assert list_topologies(TOPO_DIR) == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_topology_is_valid_short_and_round_trips(name):
    t, warnings = check_topology(find_topology(name, TOPO_DIR))
    assert warnings == []
    assert t.name == name
    last_send = max(f.start_s + f.interval_s * (f.count - 1) for f in t.flows)
    assert last_send <= 30, "keeps make testbed within its time budget"
    assert t.expected_duration_s() <= 60
    # Enough messages for the fidelity verdict to bound a p95 interval.
    assert all(f.count >= 100 for f in t.flows)
    assert load_topology_text(topology_to_yaml(t), f"{name}.yaml") == t


def test_shipped_topologies_have_the_promised_links():
    pair = load_topology(TOPO_DIR / "pair.yaml")
    assert pair.link("a", "b") == LinkSpec(delay_s=0.02, loss=0.02)
    assert {f.ensure for f in pair.flows} == {True, False}
    ec = load_topology(TOPO_DIR / "edge-cloud.yaml")
    assert ec.link("sensor1", "edge") == LinkSpec(delay_s=0.002, loss=0.001, rate_bps=100e6)
    assert ec.link("cloud", "edge") == LinkSpec(delay_s=0.04, jitter_s=0.005,
                                                loss=0.02, rate_bps=10e6)
    mesh = load_topology(TOPO_DIR / "mesh-20.yaml")
    assert mesh.ensembles == tuple(f"e{i}" for i in range(20))
    assert all(sum(f.src == e for f in mesh.flows) == 2 for e in mesh.ensembles)
    lossy = load_topology(TOPO_DIR / "lossy.yaml")
    assert lossy.default_link.loss == 0.2


def test_find_topology_accepts_name_or_path_and_lists_names_when_missing(tmp_path):
    assert find_topology("pair", TOPO_DIR) == TOPO_DIR / "pair.yaml"
    assert find_topology(str(TOPO_DIR / "star.yaml"), tmp_path) == TOPO_DIR / "star.yaml"
    with pytest.raises(TopologyError) as info:
        find_topology("nosuch", TOPO_DIR)
    assert "pair" in info.value.fix and "nosuch" in str(info.value)
