"""Topology files: YAML text -> validated ``testbed.spec.model.Topology`` and back.

This module owns the file format (see docs/topologies.md): field names,
units, defaults and every validation rule. It is pure: it reads text, builds
frozen dataclasses, and never creates hosts, links or processes, so a bad
file stops an experiment before anything is started.

The fields of a file are declared once, in ``TOP_FIELDS``, ``LINK_FIELDS``,
``FLOW_FIELDS``, ``ENSEMBLE_FIELDS`` and ``EVENT_FIELDS`` (``Field`` rows).
The loader takes allowed and required keys, defaults and value kinds from
them, and
``testbed.spec.schema`` generates ``topologies/topology.schema.json`` from
them: add a field here, never in a second list.

API:

- ``load_topology(path)`` / ``load_topology_text(text, source_name,
  base_dir=None)`` -> ``Topology``. Every mistake raises ``TopologyError``,
  one line: ``file:line:column: entry: problem. Fix: how``. Warnings are
  logged on the ``testbed.spec.topology`` logger at WARNING level. The
  ``Topology.base_dir`` is the file's directory (``load_topology``) or the
  ``base_dir`` given; when it is known, ``app:`` files must exist in it.
- ``check_topology(path)`` / ``check_topology_text(text, source_name,
  base_dir=None)`` ->
  ``(Topology, [TopologyWarning])``: the same, but the warnings are returned
  (not logged) for a caller that prints them itself. A warning is a doubt,
  never a failure: a bare fraction as a percentage (``loss: 0.02``), jitter
  larger than delay, fewer than two ensembles, no flows. ``str(warning)``
  is one line in the error format, naming the file and line.
- ``scan_topologies(topo_dir)`` -> one ``ScannedTopology`` per file, valid or
  not, so a listing can show the good ones and one error line per bad one.
- ``list_topologies``, ``find_topology``, ``topology_to_yaml``.
"""
from __future__ import annotations

import keyword
import logging
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path, PurePosixPath
from typing import Any, Callable, NamedTuple

import yaml

from testbed.spec.model import (ENSEMBLE_ACTIONS, EnsembleEvent, EnsembleSettings, Event,
                                Flow, HealEvent, LinkEvent, LinkSpec, PartitionEvent,
                                Topology)
from testbed.spec.units import (UnitError, format_duration, format_percent,
                                format_rate, format_size, parse_duration,
                                parse_percent, parse_rate, parse_size,
                                percent_note)

log = logging.getLogger(__name__)

#: The shipped topologies: package data, found wherever the package is installed.
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "topologies"

# Largest payload a flow may ask for. The engine keeps a whole message in
# memory on both ends; 64 MiB is far above any TTPython token and still small
# enough that a typo ("300MB" for "300KB") is caught instead of swapping.
MAX_MESSAGE_SIZE = 64 * 2**20
# Ensemble names become container names, hostnames and netns names; keep to
# what all three accept, and short enough for derived interface names.
# Patterns are unanchored text (matched whole) so the schema can reuse them.
ENSEMBLE_NAME_PATTERN = r"[A-Za-z][A-Za-z0-9_-]{0,31}"
FLOW_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}"
ENSEMBLE_NAME = re.compile(ENSEMBLE_NAME_PATTERN)
FLOW_NAME = re.compile(FLOW_NAME_PATTERN)
# An ensemble's app: 'path/to/file.py' or 'path/to/file.py:function'. The
# function pattern reads alike in Python and ECMA-262 (the schema's regex
# dialect): an ASCII identifier, or any non-ASCII character, since Python
# identifiers may have non-ASCII letters (the loader checks str.isidentifier).
APP_FUNCTION_PATTERN = r"(?:[A-Za-z_]|[^\x00-\x7f])(?:[A-Za-z0-9_]|[^\x00-\x7f])*"
APP_PATTERN = rf"(?:.*/)?[^/]+\.py(?::{APP_FUNCTION_PATTERN})?"
# A links key is 'a->b' (one direction) or 'a<->b' (both); longest first.
LINK_SEPARATORS = ("<->", "->")
# A flow gives exactly one of these.
FLOW_SIZE_KEYS = ("size", "sizes")


@dataclass(frozen=True)
class Field:
    """One key of a topology file: the loader's and the schema's source.

    ``kind`` says how the value is written and read (a key of ``KINDS``);
    ``default`` is the value as a file would write it (None: no default, or
    one computed from other fields, as ``doc`` says); ``attr`` is the
    ``LinkSpec`` attribute of a link field; ``minimum`` bounds an integer;
    ``positive`` refuses a zero duration (every duration refuses < 0).
    """

    key: str
    kind: str
    doc: str
    required: bool = False
    default: Any = None
    minimum: int | None = None
    attr: str = ""
    positive: bool = False


# Value kinds that are a number with a unit: kind -> (parser, formatter).
UNIT_KINDS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "duration": (parse_duration, format_duration),
    "percent": (parse_percent, format_percent),
    "rate": (parse_rate, format_rate),
    "size": (parse_size, format_size),
}
# Every kind a Field may have; testbed.spec.schema has one schema per kind.
# An empty value (null) of kind link, links or flows means "none given".
KINDS = (*UNIT_KINDS, "text", "secret", "name", "integer", "boolean",
         "ensemble", "ensembles", "sizes", "link", "links", "flows", "command", "app")
# The kinds of the fault timeline (``events:``; EVENT_FIELDS).
KINDS += ("events", "link_name", "action", "groups")
# A device-like host's limits (ENSEMBLE_FIELDS cpus/memory).
KINDS += ("cpus", "memory")
# Where the swarm backend may run an ensemble (ENSEMBLE_FIELDS placement).
KINDS += ("placement",)
#: One swarm placement constraint: ``<attribute>==<value>`` or ``!=``.
PLACEMENT_PATTERN = r"^\s*[A-Za-z0-9_.-]+\s*(==|!=)\s*\S.*$"
#: The smallest CPU share docker accepts (--cpus 0.01).
MIN_CPUS = 0.01
#: The least memory an ensemble may be given: its python agent needs more.
MIN_MEMORY = 16 * 10**6

LINK_FIELDS: dict[str, Field] = {f.key: f for f in (
    Field("delay", "duration", "one-way delay", default=0, attr="delay_s"),
    Field("jitter", "duration", "delay variation, added to delay; keep it <= delay",
          default=0, attr="jitter_s"),
    Field("loss", "percent", "packets dropped, e.g. 2%", default="0%", attr="loss"),
    Field("rate", "rate", "bandwidth limit, e.g. 10mbit; unlimited if absent",
          default="unlimited", attr="rate_bps"),
    Field("duplicate", "percent", "packets delivered twice", default="0%",
          attr="duplicate"),
    Field("corrupt", "percent", "packets with a flipped bit", default="0%",
          attr="corrupt"),
)}
FLOW_FIELDS: dict[str, Field] = {f.key: f for f in (
    Field("name", "name", "flow name; default '<from>-<to>', numbered if repeated"),
    Field("from", "ensemble", "sending ensemble", required=True),
    Field("to", "ensemble", "receiving ensemble", required=True),
    Field("size", "size", "message size: bytes, or 200KB (x1000), 256KiB (x1024); "
          "give exactly one of size and sizes"),
    Field("sizes", "sizes", "message k has size sizes[k % len(sizes)]; "
          "give exactly one of size and sizes"),
    Field("count", "integer", "messages sent", required=True, minimum=1),
    Field("interval", "duration", "time between two sends of this flow", required=True),
    Field("ensure", "boolean", "reliable (acknowledged) send", default=False),
    Field("deadline", "duration", "an ensure=True send fails after this",
          default="30s", positive=True),
    Field("start", "duration", "first send, from the experiment start", default=0),
)}
# The settings of one ensemble in the mapping form of ensembles:.
ENSEMBLE_FIELDS: dict[str, Field] = {f.key: f for f in (
    Field("run", "command", "command line run by /bin/sh -c in the ensemble's host, "
          "from the topology file's directory (docs/apps.md)"),
    Field("app", "app", "'path/to/file.py' or 'path/to/file.py:function' (default "
          "main), relative to the topology file's directory (docs/apps.md)"),
    Field("cpus", "cpus", "share of CPU cores the host may use, e.g. 0.25 (a quarter "
          "of one core, about a Raspberry Pi's share); at least 0.01; docker only"),
    Field("memory", "memory", "memory the host may use, e.g. 256MB or 512MiB; at least "
          "16MB; docker only"),
    Field("placement", "placement", "swarm placement constraints a node must meet to run "
          "this ensemble, e.g. [node.labels.zone==edge, node.role!=manager]; swarm "
          "backend only (docs/swarm.md)"),
)}
TOP_FIELDS: dict[str, Field] = {f.key: f for f in (
    Field("name", "name", "topology name; default: the file name without .yaml"),
    Field("description", "text", "free text shown in lists and reports", default=""),
    Field("seed", "integer", "seeds loss/jitter draws and the simulator", default=1),
    Field("auth_key", "secret", "shared key for authenticated packets"),
    Field("ensembles", "ensembles", "unique ensemble names, or a mapping from "
          "ensemble name to its settings ({run: ..., app: ..., cpus: ..., memory: ...}, "
          "{} or empty for none)",
          required=True),
    Field("duration", "duration", "planned run length of programs and apps; "
          "required when an ensemble has run: or app:", positive=True),
    Field("capture", "boolean", "write one pcap per ensemble into the run directory "
          "(capture/<ensemble>.pcap; docs/capture.md)", default=False),
    Field("fast_start", "boolean", "ttnet's fast start on every ensemble: ensure=True "
          "messages of up to 1200 bytes go as one datagram, delivered after one "
          "one-way trip instead of three (ttnet peers only; docs/wire-format.md)",
          default=False),
    Field("defaults", "link", "every link not listed in links (all zero if absent)"),
    Field("links", "links", "per-pair overrides laid over defaults: "
          "'a->b' one direction, 'a<->b' both"),
    Field("flows", "flows", "messages one ensemble sends to another"),
    Field("events", "events", "the fault timeline: link changes, partitions, "
          "ensemble pause/resume/kill/restart, at times from the experiment start"),
)}
# One entry of events:. Exactly one of link (with set), ensemble (with
# action), partition and heal says what it does (EVENT_KEYS).
EVENT_FIELDS: dict[str, Field] = {f.key: f for f in (
    Field("at", "duration", "when, from the experiment start", required=True),
    Field("link", "link_name", "the link to change: 'a->b' one direction, 'a<->b' both; "
          "with set:"),
    Field("set", "link", "link fields laid over the link's spec in force "
          "(as in links:), e.g. {loss: 100%}"),
    Field("ensemble", "ensemble", "the ensemble that action: acts on"),
    Field("action", "action", "pause, resume, kill or restart (a reboot: a fresh agent "
          "at the same address)"),
    Field("partition", "groups", "two or more lists of ensembles: every packet between "
          "two groups is dropped until heal:; ensembles in no group keep their links"),
    Field("heal", "boolean", "true: end the partition; the links are again what "
          "links: and link events say"),
)}
#: What an event does: each tuple's keys go together, and an event has the
#: keys of exactly one tuple (besides at:).
EVENT_KEYS = (("link", "set"), ("ensemble", "action"), ("partition",), ("heal",))


def _where(source: str, line: int | None, column: int | None, entry: str) -> str:
    where = source if line is None else f"{source}:{line}:{column}"
    return f"{where}: {entry}" if entry else where


class TopologyError(ValueError):
    """A topology file is wrong. ``source``/``entry``/``fix`` say where and
    how; ``line``/``column`` (1-based, None when unknown) point into the file."""

    def __init__(self, source: str, entry: str, problem: str, fix: str,
                 line: int | None = None, column: int | None = None) -> None:
        super().__init__(f"{_where(source, line, column, entry)}: {problem}. Fix: {fix}")
        self.source, self.entry, self.problem, self.fix = source, entry, problem, fix
        self.line, self.column = line, column


@dataclass(frozen=True)
class TopologyWarning:
    """Something in a valid file that probably does not mean what was meant."""

    source: str
    entry: str
    problem: str
    fix: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        return f"{_where(self.source, self.line, self.column, self.entry)}: " \
               f"{self.problem}. Fix: {self.fix}"


# --- YAML with positions -------------------------------------------------------

class _Loc(NamedTuple):
    """Where a node starts (1-based) and, for a plain scalar, its text as
    written: ``no`` for what YAML 1.1 reads as False."""

    line: int
    column: int
    text: str | None = None


def _loc(node: yaml.Node) -> _Loc:
    plain = isinstance(node, yaml.ScalarNode) and node.style is None
    return _Loc(node.start_mark.line + 1, node.start_mark.column + 1,
                node.value if plain else None)


class _Map(dict):
    """A YAML mapping that remembers where it, each key and each value are."""

    def __init__(self, loc: _Loc) -> None:
        super().__init__()
        self.loc = loc
        self.key_locs: dict[Any, _Loc] = {}
        self.value_locs: dict[Any, _Loc] = {}


class _Seq(list):
    """A YAML sequence that remembers where it and each item are."""

    def __init__(self, items: list, loc: _Loc, locs: list[_Loc]) -> None:
        super().__init__(items)
        self.loc, self.locs = loc, locs


class _DuplicateKey(yaml.constructor.ConstructorError):
    pass


class _Loader(yaml.SafeLoader):
    """SafeLoader that builds ``_Map``/``_Seq`` (with positions) and refuses
    duplicate keys: plain YAML silently keeps the last one, which would hide
    a second ``a->b`` override."""


def _construct_mapping(loader: _Loader, node: yaml.Node) -> _Map:
    if not isinstance(node, yaml.MappingNode):
        raise yaml.constructor.ConstructorError(
            None, None, f"expected a mapping node, but found {node.id}", node.start_mark)
    seen: dict[Any, yaml.Mark] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark,
                "found an unhashable key", key_node.start_mark) from None
        if first is not None:
            raise _DuplicateKey("while reading a mapping", node.start_mark,
                                f"duplicate key {key!r} (first at line {first.line + 1})",
                                key_node.start_mark)
        seen[key] = key_node.start_mark
    loader.flatten_mapping(node)  # '<<' merge keys; later keys win
    result = _Map(_loc(node))
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_locs[key] = _loc(key_node)
        result.value_locs[key] = _loc(value_node)
    return result


def _construct_sequence(loader: _Loader, node: yaml.Node) -> _Seq:
    if not isinstance(node, yaml.SequenceNode):
        raise yaml.constructor.ConstructorError(
            None, None, f"expected a sequence node, but found {node.id}", node.start_mark)
    return _Seq([loader.construct_object(child, deep=True) for child in node.value],
                _loc(node), [_loc(child) for child in node.value])


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def _parse_yaml(text: str, source: str) -> tuple[Any, _Loc]:
    """The document and where it starts. Raises TopologyError."""
    loader = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        doc = loader.construct_document(node) if node is not None else None
    except _DuplicateKey as exc:
        mark = exc.problem_mark
        raise TopologyError(source, "", exc.problem, "keep one of them (YAML would "
                            "silently use the last)", mark.line + 1, mark.column + 1) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "unreadable"
        if exc.context and exc.problem:
            problem += f" ({exc.context}"
            if exc.context_mark is not None:
                problem += (f" started at line {exc.context_mark.line + 1}, "
                            f"column {exc.context_mark.column + 1}")
            problem += ")"
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        raise TopologyError(source, "", f"not valid YAML: {problem}",
                            "fix the YAML syntax at the line shown", line, column) from None
    except yaml.reader.ReaderError as exc:
        before = text[:exc.position]
        line, column = before.count("\n") + 1, exc.position - before.rfind("\n")
        raise TopologyError(source, "", f"not valid YAML: {exc.reason} "
                            f"(character {exc.character!r})",
                            "remove the character or write it as an escape in a "
                            "double-quoted string", line, column) from None
    except yaml.YAMLError as exc:
        raise TopologyError(source, "", f"not valid YAML ({exc})",
                            "fix the YAML syntax") from None
    finally:
        if loader is not None:
            loader.dispose()
    return doc, (_loc(node) if node is not None else _Loc(1, 1))


def _at(container: Any, key: Any, *, of_key: bool = False) -> _Loc | None:
    """Where ``container[key]`` (or, ``of_key``, the key itself) is written."""
    if isinstance(container, _Map):
        locs = container.key_locs if of_key else container.value_locs
        return locs.get(key, container.loc)
    if isinstance(container, _Seq):
        if isinstance(key, int) and 0 <= key < len(container.locs):
            return container.locs[key]
        return container.loc
    return None


def _as_written(value: Any, loc: _Loc | None) -> str:
    """``value`` for a message: the text in the file when YAML turned a plain
    word into something else (``no`` rather than ``False``)."""
    if isinstance(value, str) or loc is None or loc.text is None:
        return repr(value)
    if value is None and not loc.text:
        return "an empty value"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return loc.text
    return repr(loc.text)


def _misread(value: Any, loc: _Loc | None, pattern: re.Pattern[str]) -> str | None:
    """The text of a plain scalar that YAML 1.1 turned into a non-string
    (``no`` -> False, ``007`` -> 7) although it is a valid name as written."""
    if isinstance(value, str) or loc is None or not loc.text:
        return None
    return loc.text if pattern.fullmatch(loc.text) else None


def _misread_problem(text: str, value: Any, what: str) -> str:
    return f"YAML 1.1 reads {text} as {type(value).__name__} {value!r}, not as {what}"


# --- validation ----------------------------------------------------------------

class _Reader:
    """Validation context for one file: its name for messages, the directory
    ``app:`` paths are relative to (None: unknown, not checked), the warnings."""

    def __init__(self, source: str, base_dir: str | None = None) -> None:
        self.source = source
        self.base_dir = base_dir
        self.warnings: list[TopologyWarning] = []

    def fail(self, entry: str, problem: str, fix: str,
             at: _Loc | None = None) -> TopologyError:
        line, column = (at.line, at.column) if at else (None, None)
        return TopologyError(self.source, entry, problem, fix, line, column)

    def warn(self, entry: str, problem: str, fix: str, at: _Loc | None) -> None:
        line, column = (at.line, at.column) if at else (None, None)
        self.warnings.append(TopologyWarning(self.source, entry, problem, fix,
                                             line, column))

    def mapping(self, value: Any, entry: str, table: dict[str, Field],
                example: str, at: _Loc | None) -> dict:
        if not isinstance(value, dict):
            raise self.fail(entry, f"expected a mapping, got {_as_written(value, at)}",
                            f"write it as e.g. {example}", at)
        for key in value:
            if key not in table:
                raise self.fail(f"{entry}.{key}" if entry else str(key),
                                f"unknown field {key!r}",
                                f"remove it or use one of {', '.join(sorted(table))}",
                                _at(value, key, of_key=True))
        for field in table.values():
            if field.required and field.key not in value:
                where = f"{entry}.{field.key}" if entry else field.key
                raise self.fail(where, "missing required field",
                                f"add '{field.key}:' ({field.doc})",
                                getattr(value, "loc", at))
        return value

    def unit(self, kind: str, raw: Any, entry: str, at: _Loc | None) -> Any:
        try:
            return UNIT_KINDS[kind][0](raw)
        except UnitError as exc:
            raise self.fail(entry, exc.problem, exc.fix, at) from None

    def scalar(self, table: dict[str, Field], container: dict, key: str,
               entry: str) -> Any:
        """The value of field ``key`` in ``container`` read per its kind, or
        its default (read the same way) when absent."""
        field = table[key]
        at = _at(container, key)
        raw = container.get(key, field.default)
        if field.kind in UNIT_KINDS:
            value = self.unit(field.kind, raw, entry, at)
            if field.kind == "duration" and field.positive and value <= 0:
                raise self.fail(entry, f"{key} must be positive",
                                f"write a {key} > 0, e.g. {key}: 10s", at)
            if field.kind == "duration" and value < 0:
                raise self.fail(entry, f"{raw!r} is negative",
                                f"write a {key} >= 0, e.g. 20ms", at)
            if field.kind == "percent" and key in container:
                note = percent_note(raw)
                if note:
                    self.warn(entry, *note, at)
            return value
        if field.kind == "integer":
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise self.fail(entry, f"{_as_written(raw, at)} is not a whole number",
                                "write an integer" + (f" >= {field.minimum}"
                                                      if field.minimum is not None else ""),
                                at)
            if field.minimum is not None and raw < field.minimum:
                raise self.fail(entry, f"{raw} is below {field.minimum}",
                                f"write an integer >= {field.minimum}", at)
            return raw
        if field.kind == "boolean":
            if not isinstance(raw, bool):
                raise self.fail(entry, f"{_as_written(raw, at)} is not true/false",
                                f"write {key}: true or {key}: false", at)
            return raw
        if field.kind in ("text", "secret"):
            what = "text" if field.kind == "text" else "a non-empty string"
            if not isinstance(raw, str) and at is not None and at.text:
                raise self.fail(entry, _misread_problem(at.text, raw, what),
                                f"quote it: '{at.text}'", at)
            if not isinstance(raw, str) or (field.kind == "secret" and not raw):
                raise self.fail(entry, f"{_as_written(raw, at)} is not {what}",
                                f"write it in quotes, e.g. {key}: 'some text'", at)
            return raw
        if field.kind == "name":
            text = _misread(raw, at, FLOW_NAME)
            if text is not None:
                raise self.fail(entry, _misread_problem(text, raw, "a name"),
                                f"quote it: '{text}'", at)
            if not isinstance(raw, str) or not FLOW_NAME.fullmatch(raw):
                raise self.fail(entry, f"{_as_written(raw, at)} is not a valid name",
                                "use letters, digits, '-', '_', '.', ':' (max 64)", at)
            return raw
        if field.kind == "command":
            if not isinstance(raw, str) and at is not None and at.text:
                raise self.fail(entry, _misread_problem(at.text, raw, "a command line"),
                                f"quote it: '{at.text}'", at)
            if not isinstance(raw, str) or not raw.strip():
                raise self.fail(entry, f"{_as_written(raw, at)} is not a command line",
                                f"write the command to run, e.g. {key}: python3 sensor.py",
                                at)
            return raw
        if field.kind == "app":
            return self.app(raw, entry, at)
        if field.kind in ("cpus", "memory"):
            return self.limit(field.kind, raw, entry, at)
        if field.kind == "placement":
            return self.placement(raw, entry, at)
        raise AssertionError(f"field {key!r} of kind {field.kind!r} is not a scalar")

    def placement(self, raw: Any, entry: str, at: _Loc | None) -> tuple[str, ...]:
        """A non-empty list of swarm placement constraints."""
        fix = "write e.g. placement: [node.labels.zone==edge, node.role!=manager]"
        if not isinstance(raw, list) or not raw:
            raise self.fail(entry, f"{_as_written(raw, at)} is not a list of placement "
                            "constraints", fix, at)
        for c in raw:
            if not isinstance(c, str) or not re.match(PLACEMENT_PATTERN, c):
                raise self.fail(entry, f"{c!r} is not a placement constraint "
                                "('<attribute>==<value>' or '<attribute>!=<value>')", fix, at)
        return tuple(c.strip() for c in raw)

    def limit(self, kind: str, raw: Any, entry: str, at: _Loc | None) -> float | int:
        """A ``cpus:`` share (a number >= MIN_CPUS) or a ``memory:`` size
        (>= MIN_MEMORY bytes)."""
        if kind == "cpus":
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) \
                    or not raw >= MIN_CPUS or raw == float("inf"):
                raise self.fail(entry, f"{_as_written(raw, at)} is not a CPU share",
                                f"write a number of cores >= {MIN_CPUS}, e.g. cpus: 0.25", at)
            return float(raw)
        if isinstance(raw, bool):
            raise self.fail(entry, f"{_as_written(raw, at)} is not a size",
                            "write e.g. memory: 256MB", at)
        size = self.unit("size", raw, entry, at)
        if size < MIN_MEMORY:
            raise self.fail(entry, f"memory {raw!r} is below 16MB",
                            "give at least 16MB (did you mean MB rather than KB?)", at)
        return size

    def link(self, value: Any, entry: str, base: LinkSpec, at: _Loc | None) -> LinkSpec:
        """Link properties in ``value`` laid over ``base``."""
        if value is None:
            return base
        props = self.mapping(value, entry, LINK_FIELDS, "{delay: 20ms, loss: 2%}", at)
        spec = {f.name: getattr(base, f.name) for f in fields(LinkSpec)}
        for key in props:
            spec[LINK_FIELDS[key].attr] = self.scalar(LINK_FIELDS, props, key,
                                                      f"{entry}.{key}")
        result = LinkSpec(**spec)
        if result.jitter_s > result.delay_s and ("delay" in props or "jitter" in props):
            self.warn(entry, f"jitter {format_duration(result.jitter_s)} is larger than "
                      f"delay {format_duration(result.delay_s)}, so the delay "
                      "distribution is clipped at 0",
                      "keep jitter <= delay (docs/topologies.md, Links)", at)
        return result

    def app(self, raw: Any, entry: str, at: _Loc | None) -> str:
        """An ``app:`` value: ``path.py`` or ``path.py:function``, relative,
        and (when the base directory is known) an existing file."""
        example = "app: apps/pipeline.py or app: apps/pipeline.py:edge"
        if not isinstance(raw, str) and at is not None and at.text:
            raise self.fail(entry, _misread_problem(at.text, raw, "a file name"),
                            f"quote it: '{at.text}'", at)
        if not isinstance(raw, str) or not raw:
            raise self.fail(entry, f"{_as_written(raw, at)} is not an app",
                            f"write e.g. {example}", at)
        path, function = raw, None
        if not raw.endswith(".py") and ":" in raw:
            path, _, function = raw.rpartition(":")
        if PurePosixPath(path).suffix != ".py":
            raise self.fail(entry, f"app file {path!r} does not end in .py",
                            f"name a Python file, e.g. {example}", at)
        if function is not None and (not function.isidentifier()
                                     or keyword.iskeyword(function)):
            raise self.fail(entry, f"{function!r} is not a Python function name",
                            "after ':' name a function of the file (letters, digits, "
                            "'_', not starting with a digit), or leave ':function' "
                            "out to call main", at)
        if PurePosixPath(path).is_absolute():
            raise self.fail(entry, f"app file {path!r} is an absolute path",
                            "make it relative to the topology file's directory, so "
                            "the run directory can carry a copy", at)
        if self.base_dir is not None and not (Path(self.base_dir) / path).is_file():
            raise self.fail(entry, f"app file {path!r} not found in {self.base_dir}",
                            "give the path relative to the topology file's directory",
                            at)
        return raw

    def ensemble_name(self, name: Any, entry: str, where: _Loc | None,
                      names: list[str]) -> str:
        text = _misread(name, where, ENSEMBLE_NAME)
        if text is not None:
            raise self.fail(entry, _misread_problem(text, name, "a name"),
                            f"quote it: '{text}'", where)
        if not isinstance(name, str):
            raise self.fail(entry, f"{_as_written(name, where)} is not a name "
                            f"(YAML read it as {type(name).__name__} {name!r})",
                            "pick a name starting with a letter", where)
        if not ENSEMBLE_NAME.fullmatch(name):
            raise self.fail(entry, f"{name!r} is not a valid ensemble name",
                            "start with a letter; use letters, digits, "
                            "'-' or '_'; at most 32 characters", where)
        if name in names:
            raise self.fail(entry, f"duplicate ensemble name {name!r}",
                            "give every ensemble a different name", where)
        return name

    def ensemble_settings(self, value: Any, entry: str,
                          at: _Loc | None) -> EnsembleSettings:
        """The settings of one ensemble of the mapping form; null is none."""
        if value is None:
            return EnsembleSettings()
        raw = self.mapping(value, entry, ENSEMBLE_FIELDS,
                           "{run: python3 sensor.py} or {app: apps/pipeline.py:edge}", at)
        return EnsembleSettings(**{key: self.scalar(ENSEMBLE_FIELDS, raw, key,
                                                    f"{entry}.{key}") for key in raw})

    def ensembles(self, doc: dict) -> tuple[tuple[str, ...], dict[str, EnsembleSettings]]:
        """The names, in file order, and the settings of those that have any."""
        value, at = doc["ensembles"], _at(doc, "ensembles")
        names: list[str] = []
        settings: dict[str, EnsembleSettings] = {}
        if isinstance(value, list) and value:
            for i, name in enumerate(value):
                names.append(self.ensemble_name(name, f"ensembles[{i}]", _at(value, i),
                                                names))
        elif isinstance(value, dict) and value:
            # Duplicate keys never get here: the YAML reader refuses them.
            for key, props in value.items():
                where = _at(value, key, of_key=True)
                entry = f"ensembles[{key!r}]" if isinstance(key, str) \
                    else f"ensembles[{_as_written(key, where)}]"
                name = self.ensemble_name(key, entry, where, names)
                names.append(name)
                item = self.ensemble_settings(props, entry, _at(value, key))
                if item != EnsembleSettings():
                    settings[name] = item
        else:
            raise self.fail("ensembles", f"expected a non-empty list or mapping, got "
                            f"{_as_written(value, at)}", "write e.g. ensembles: [a, b], "
                            "or ensembles: {a: {run: python3 a.py}, b: {}}", at)
        if len(names) < 2:
            self.warn("ensembles", f"only one ensemble ({names[0]}): no link "
                      "can carry a message", "add a second ensemble and a flow to it", at)
        return tuple(names), settings

    def endpoint(self, name: Any, entry: str, ensembles: tuple[str, ...],
                 at: _Loc | None) -> str:
        if name not in ensembles:
            text = _misread(name, at, ENSEMBLE_NAME)
            if text in ensembles:
                raise self.fail(entry, _misread_problem(text, name, "an ensemble name"),
                                f"quote it: '{text}'", at)
            raise self.fail(entry, f"unknown ensemble {_as_written(name, at)}",
                            f"add it to ensembles or use one of {', '.join(ensembles)}", at)
        return name

    def links(self, doc: dict, ensembles: tuple[str, ...],
              default: LinkSpec) -> dict[tuple[str, str], LinkSpec]:
        value, at = doc.get("links"), _at(doc, "links")
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail("links", f"expected a mapping, got {_as_written(value, at)}",
                            "write e.g. links: {a->b: {loss: 5%}}", at)
        symmetric: dict[tuple[str, str], LinkSpec] = {}
        directed: dict[tuple[str, str], tuple[str, Any, _Loc | None]] = {}
        for key, props in value.items():
            entry, key_at = f"links[{key!r}]", _at(value, key, of_key=True)
            src, dst, both = self.link_name(key, entry, ensembles, key_at)
            if not both:
                if (src, dst) in directed:
                    raise self.fail(entry, f"link {src}->{dst} is given twice",
                                    "keep one entry per direction", key_at)
                directed[(src, dst)] = (entry, props, _at(value, key))
                continue
            spec = self.link(props, entry, default, _at(value, key))
            for pair in ((src, dst), (dst, src)):
                if pair in symmetric:
                    raise self.fail(entry, f"link {src}<->{dst} is given twice",
                                    "keep one of 'a<->b' and 'b<->a'", key_at)
                symmetric[pair] = spec
        # A one-way entry is more specific than a two-way one, so it wins
        # (documented): 'a<->b' sets both, 'a->b' then refines one side.
        links = dict(symmetric)
        for pair, (entry, props, props_at) in directed.items():
            links[pair] = self.link(props, entry, symmetric.get(pair, default), props_at)
        return links

    def flow(self, items: list, index: int, ensembles: tuple[str, ...]) -> Flow:
        entry, at = f"flows[{index}]", _at(items, index)
        raw = items[index]
        if isinstance(raw, dict) and "name" in raw:
            written = _at(raw, "name")
            entry = f"flows[{index}] ({written.text if written and written.text else raw['name']})"
        raw = self.mapping(raw, entry, FLOW_FIELDS,
                           "{from: a, to: b, size: 1200, count: 50, interval: 100ms}", at)
        at = getattr(raw, "loc", at)

        def field(key: str) -> Any:
            return self.scalar(FLOW_FIELDS, raw, key, f"{entry}.{key}")

        name = field("name") if "name" in raw else None
        src = self.endpoint(raw["from"], f"{entry}.from", ensembles, _at(raw, "from"))
        dst = self.endpoint(raw["to"], f"{entry}.to", ensembles, _at(raw, "to"))
        if src == dst:
            raise self.fail(entry, f"flow from {src!r} to itself",
                            "send to a different ensemble", _at(raw, "to"))
        given = [k for k in FLOW_SIZE_KEYS if k in raw]
        if len(given) != 1:
            raise self.fail(f"{entry}.size", "give exactly one of 'size' and 'sizes'",
                            "write size: 1200, or sizes: [64, 128, 256]",
                            _at(raw, given[-1], of_key=True) if given else at)
        if "size" in raw:
            sizes = (self.size(raw["size"], f"{entry}.size", _at(raw, "size")),)
        else:
            listed, listed_at = raw["sizes"], _at(raw, "sizes")
            if not isinstance(listed, list) or not listed:
                raise self.fail(f"{entry}.sizes", f"expected a non-empty list, "
                                f"got {listed!r}", "write sizes: [64, 128, 256]", listed_at)
            sizes = tuple(self.size(s, f"{entry}.sizes[{i}]", _at(listed, i))
                          for i, s in enumerate(listed))
        return Flow(name=name if name is not None else f"{src}-{dst}", src=src, dst=dst,
                    sizes=sizes, count=field("count"), interval_s=field("interval"),
                    ensure=field("ensure"), deadline_s=field("deadline"),
                    start_s=field("start"))

    def size(self, value: Any, entry: str, at: _Loc | None) -> int:
        size = self.unit("size", value, entry, at)
        if size < 1:
            raise self.fail(entry, f"size {value!r} is below 1 byte",
                            "write a size of at least 1 byte", at)
        if size > MAX_MESSAGE_SIZE:
            raise self.fail(entry, f"size {value!r} is over the 64 MiB limit",
                            "send smaller messages (did you mean KB?)", at)
        return size

    def flows(self, doc: dict, ensembles: tuple[str, ...], top: _Loc,
              programs: bool = False) -> tuple[Flow, ...]:
        """The flows; ``programs``: some ensemble has run: or app:, which
        sends by itself, so no flows is no cause for a warning."""
        value, at = doc.get("flows"), _at(doc, "flows")
        if value is None:
            value = []
        if not isinstance(value, list):
            raise self.fail("flows", f"expected a list, got {_as_written(value, at)}",
                            "write flows as a list of '- from: a ...' items", at)
        flows = [self.flow(value, i, ensembles) for i in range(len(value))]
        if not flows and not programs:
            self.warn("flows", "no flows: nothing is sent, so a run measures nothing",
                      "add a flow, e.g. '- {from: a, to: b, size: 100, count: 100, "
                      "interval: 10ms}'", at or top)
        # Unnamed flows get "src-dst"; number repeats so names stay unique,
        # since events and reports key everything on the flow name.
        unnamed = {i for i, item in enumerate(value) if "name" not in item}
        seen: dict[str, int] = {}
        result = []
        for i, flow in enumerate(flows):
            name = flow.name
            if name in seen:
                if i not in unnamed:
                    raise self.fail(f"flows[{i}].name", f"duplicate flow name "
                                    f"{name!r} (also flows[{seen[name]}])",
                                    "give every flow a different name",
                                    _at(value[i], "name"))
                k = 2
                while f"{name}-{k}" in seen:
                    k += 1
                name = f"{name}-{k}"
                flow = replace(flow, name=name)
            seen[name] = i
            result.append(flow)
        return tuple(result)

    def link_name(self, raw: Any, entry: str, ensembles: tuple[str, ...],
                  at: _Loc | None) -> tuple[str, str, bool]:
        """``'a->b'`` -> (a, b, False); ``'a<->b'`` -> (a, b, True): a
        ``links:`` key and an event's ``link:`` alike."""
        text = raw if isinstance(raw, str) else ""
        sep = next((s for s in LINK_SEPARATORS if s in text), None)
        parts = [p.strip() for p in text.split(sep)] if sep else []
        if len(parts) != 2:
            raise self.fail(entry, f"{_as_written(raw, at)} is not a link",
                            "name a link 'a->b' (one direction) or 'a<->b' (both)", at)
        src = self.endpoint(parts[0], entry, ensembles, at)
        dst = self.endpoint(parts[1], entry, ensembles, at)
        if src == dst:
            raise self.fail(entry, "a link from an ensemble to itself",
                            "name two different ensembles", at)
        return src, dst, sep == "<->"

    def event(self, items: list, index: int, ensembles: tuple[str, ...]) -> Event:
        entry, at = f"events[{index}]", _at(items, index)
        raw = self.mapping(items[index], entry, EVENT_FIELDS,
                           "{at: 5s, link: a<->b, set: {loss: 100%}}", at)
        at = getattr(raw, "loc", at)
        when = self.scalar(EVENT_FIELDS, raw, "at", f"{entry}.at")
        given = [keys for keys in EVENT_KEYS if any(k in raw for k in keys)]
        if len(given) != 1:
            what = " and ".join(k for keys in given for k in keys if k in raw)
            raise self.fail(entry, f"an event does one thing; this one has {what}"
                            if given else "the event says nothing to do",
                            "give exactly one of link: with set:, ensemble: with "
                            "action:, partition: [[a], [b]], or heal: true", at)
        keys = given[0]
        for key in keys:
            if key not in raw:
                raise self.fail(f"{entry}.{key}", "missing required field",
                                f"add '{key}:' ({EVENT_FIELDS[key].doc})", at)
        if keys == ("link", "set"):
            src, dst, both = self.link_name(raw["link"], f"{entry}.link", ensembles,
                                            _at(raw, "link"))
            value, value_at = raw["set"], _at(raw, "set")
            if not value:
                raise self.fail(f"{entry}.set", "nothing to set",
                                "name the link fields to change, e.g. set: {loss: 100%}",
                                value_at)
            props = self.mapping(value, f"{entry}.set", LINK_FIELDS,
                                 "{delay: 80ms, loss: 2%}", value_at)
            changes = tuple((LINK_FIELDS[key].attr,
                             self.scalar(LINK_FIELDS, props, key, f"{entry}.set.{key}"))
                            for key in props)
            return LinkEvent(when, src, dst, changes, both)
        if keys == ("ensemble", "action"):
            name = self.endpoint(raw["ensemble"], f"{entry}.ensemble", ensembles,
                                 _at(raw, "ensemble"))
            action, action_at = raw["action"], _at(raw, "action")
            if action not in ENSEMBLE_ACTIONS:
                raise self.fail(f"{entry}.action", f"unknown action "
                                f"{_as_written(action, action_at)}",
                                f"use one of {', '.join(ENSEMBLE_ACTIONS)}", action_at)
            return EnsembleEvent(when, name, action)
        if keys == ("heal",):
            if raw["heal"] is not True:
                raise self.fail(f"{entry}.heal", f"{_as_written(raw['heal'], _at(raw, 'heal'))}"
                                " heals nothing", "write heal: true, or remove the event",
                                _at(raw, "heal"))
            return HealEvent(when)
        value, value_at = raw["partition"], _at(raw, "partition")
        fix = "write e.g. partition: [[a, b], [c]] (two or more groups of ensembles)"
        if not isinstance(value, list) or len(value) < 2:
            raise self.fail(f"{entry}.partition", f"expected two or more groups, got "
                            f"{_as_written(value, value_at)}", fix, value_at)
        seen: set[str] = set()
        groups = []
        for g, group in enumerate(value):
            where = _at(value, g)
            if not isinstance(group, list) or not group:
                raise self.fail(f"{entry}.partition[{g}]", "expected a non-empty list "
                                f"of ensembles, got {_as_written(group, where)}", fix, where)
            names = []
            for i, item in enumerate(group):
                name = self.endpoint(item, f"{entry}.partition[{g}][{i}]", ensembles,
                                     _at(group, i))
                if name in seen:
                    raise self.fail(f"{entry}.partition[{g}][{i}]", f"{name!r} is in "
                                    "two groups", "list every ensemble at most once",
                                    _at(group, i))
                seen.add(name)
                names.append(name)
            groups.append(tuple(names))
        return PartitionEvent(when, tuple(groups))

    def events(self, doc: dict, ensembles: tuple[str, ...]) -> tuple[Event, ...]:
        """The timeline, sorted by time (file order on ties); ensemble
        actions must make sense in that order."""
        value, at = doc.get("events"), _at(doc, "events")
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.fail("events", f"expected a list, got {_as_written(value, at)}",
                            "write events as a list of '- {at: 5s, ...}' items", at)
        read = [(self.event(value, i, ensembles), i) for i in range(len(value))]
        read.sort(key=lambda item: item[0].at_s)
        state: dict[str, str] = {}
        for event, i in read:
            if not isinstance(event, EnsembleEvent):
                continue
            now, where = state.get(event.ensemble, "running"), _at(value[i], "action")
            entry = f"events[{i}].action"
            if now == "killed" and event.action != "restart":
                raise self.fail(entry, f"{event.ensemble!r} was killed earlier",
                                "remove the event, or restart the ensemble before it "
                                "(a killed ensemble stays down until a restart)", where)
            if event.action == "pause" and now == "paused":
                raise self.fail(entry, f"{event.ensemble!r} is already paused",
                                "resume it first, or remove the event", where)
            if event.action == "resume" and now != "paused":
                raise self.fail(entry, f"{event.ensemble!r} is not paused then",
                                "pause it earlier, or remove the event", where)
            # restart: from any state (running, paused, killed) a fresh agent runs.
            state[event.ensemble] = {"pause": "paused", "resume": "running",
                                     "kill": "killed", "restart": "running"}[event.action]
        partitioned = False
        for event, i in read:
            if isinstance(event, HealEvent) and not partitioned:
                self.warn(f"events[{i}]", "heal with no partition in force: it does "
                          "nothing", "partition first, or remove the event", _at(value, i))
            partitioned = isinstance(event, PartitionEvent) or (
                partitioned and not isinstance(event, HealEvent))
        self._event_locs = {id(event): _at(value, i) for event, i in read}
        self._event_index = {id(event): i for event, i in read}
        return tuple(event for event, _ in read)

    def late_events(self, topology: Topology) -> None:
        """Warn about events the run never reaches."""
        end = topology.expected_duration_s()
        for event in topology.events:
            if event.at_s > end:
                i = self._event_index[id(event)]
                self.warn(f"events[{i}].at", f"at {format_duration(event.at_s)} is after "
                          f"the planned end ({format_duration(end)}): never applied",
                          "move it earlier, or lengthen the flows or duration:",
                          self._event_locs[id(event)])

    def topology(self, text: str) -> Topology:
        doc, top = _parse_yaml(text, self.source)
        if doc is None:
            raise self.fail("", "the file is empty", "write at least "
                            "'ensembles: [a, b]' and a flow", top)
        doc = self.mapping(doc, "", TOP_FIELDS, "a mapping with ensembles: and flows:", top)
        if "name" in doc:
            name = self.scalar(TOP_FIELDS, doc, "name", "name")
        else:
            name = Path(self.source).stem
            if not FLOW_NAME.fullmatch(name):
                raise self.fail("name", f"the file name {name!r} is not a valid "
                                "topology name", "add name: with letters, digits, "
                                "'-', '_', '.'", top)
        seed = self.scalar(TOP_FIELDS, doc, "seed", "seed")
        auth_key = self.scalar(TOP_FIELDS, doc, "auth_key", "auth_key") \
            if "auth_key" in doc else None
        description = self.scalar(TOP_FIELDS, doc, "description", "description")
        ensembles, settings = self.ensembles(doc)
        duration = self.scalar(TOP_FIELDS, doc, "duration", "duration") \
            if "duration" in doc else None
        # Limits alone (cpus:, memory:) run nothing by themselves.
        running = [n for n, s in settings.items() if s.run is not None or s.app is not None]
        if running and duration is None:
            raise self.fail("ensembles", "ensembles with run: or app: need duration: "
                            f"({', '.join(running)})", "add e.g. duration: 30s "
                            "(how long the programs and apps run)",
                            _at(doc, "ensembles", of_key=True))
        default = self.link(doc.get("defaults"), "defaults", LinkSpec(),
                            _at(doc, "defaults"))
        topology = Topology(name=name, ensembles=ensembles, default_link=default,
                            links=self.links(doc, ensembles, default),
                            flows=self.flows(doc, ensembles, top, programs=bool(running)),
                            seed=seed, auth_key=auth_key, description=description,
                            settings=settings, duration_s=duration, base_dir=self.base_dir,
                            capture=self.scalar(TOP_FIELDS, doc, "capture", "capture"),
                            fast_start=self.scalar(TOP_FIELDS, doc, "fast_start",
                                                   "fast_start"))
        if "events" in doc:
            topology = replace(topology, events=self.events(doc, ensembles))
            self.late_events(topology)
        return topology


# --- entry points --------------------------------------------------------------

def check_topology_text(text: str, source_name: str = "<text>", *,
                        base_dir: str | Path | None = None
                        ) -> tuple[Topology, list[TopologyWarning]]:
    """Parse and validate topology YAML; return it with its warnings (not
    logged). ``source_name`` appears in messages and its stem is the default
    topology name. ``base_dir`` becomes ``Topology.base_dir``: the directory
    ``run:`` starts in and ``app:`` paths are relative to; when given, every
    ``app:`` file must exist there. Raises TopologyError."""
    reader = _Reader(source_name, None if base_dir is None else str(base_dir))
    topology = reader.topology(text)
    return topology, reader.warnings


def load_topology_text(text: str, source_name: str = "<text>", *,
                       base_dir: str | Path | None = None) -> Topology:
    """Parse and validate topology YAML, logging its warnings (``base_dir``
    as for ``check_topology_text``). Raises TopologyError."""
    topology, warnings = check_topology_text(text, source_name, base_dir=base_dir)
    for warning in warnings:
        log.warning("%s", warning)
    return topology


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError(str(path), "", f"cannot read the file ({exc.strerror})",
                            "check the path; 'list' shows the shipped topologies") from None
    except UnicodeDecodeError as exc:
        raise TopologyError(str(path), "", f"not UTF-8 text (byte {exc.start})",
                            "save the file as UTF-8") from None


def check_topology(path: Path) -> tuple[Topology, list[TopologyWarning]]:
    """Read and validate one topology file; return it with its warnings (not
    logged). Its ``base_dir`` is the file's absolute directory. Raises
    TopologyError."""
    path = Path(path)
    return check_topology_text(_read(path), str(path),
                               base_dir=str(path.resolve().parent))


def load_topology(path: Path) -> Topology:
    """Read and validate one topology file, logging its warnings. Raises TopologyError."""
    topology, warnings = check_topology(path)
    for warning in warnings:
        log.warning("%s", warning)
    log.debug("loaded topology %s: %d ensembles, %d flows", topology.name,
              len(topology.ensembles), len(topology.flows))
    return topology


@dataclass(frozen=True)
class ScannedTopology:
    """One file of a topology directory: ``topology`` and its ``warnings``
    when it is valid, else ``error`` (``str(error)`` is one line)."""

    name: str
    path: Path
    topology: Topology | None
    error: TopologyError | None
    warnings: tuple[TopologyWarning, ...] = ()


def scan_topologies(topo_dir: Path = SHIPPED_DIR) -> list[ScannedTopology]:
    """Every topology file of ``topo_dir`` (names as ``list_topologies``),
    loaded; an invalid file gives an entry with ``error`` instead of stopping
    the scan. Nothing is logged."""
    scanned = []
    for name in list_topologies(topo_dir):
        path = Path(topo_dir) / f"{name}.yaml"
        if not path.is_file():
            path = path.with_suffix(".yml")
        try:
            topology, warnings = check_topology(path)
        except TopologyError as exc:
            scanned.append(ScannedTopology(name, path, None, exc))
        else:
            scanned.append(ScannedTopology(name, path, topology, None, tuple(warnings)))
    return scanned


# --- writing -------------------------------------------------------------------

def _link_yaml(spec: LinkSpec, base: LinkSpec) -> dict[str, Any]:
    """The properties of ``spec`` that differ from ``base``, as file text."""
    out: dict[str, Any] = {}
    for key, field in LINK_FIELDS.items():
        if getattr(spec, field.attr) != getattr(base, field.attr):
            out[key] = UNIT_KINDS[field.kind][1](getattr(spec, field.attr))
    return out


class _Dumper(yaml.SafeDumper):
    """SafeDumper that double-quotes a string holding NEL (U+0085): with
    allow_unicode, PyYAML writes it raw inside single quotes, where a reader
    folds it into a space, so the text would not load back equal."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value,
                                   style='"' if "\x85" in value else None)


_Dumper.add_representer(str, _represent_str)


_LINK_KEYS = {field.attr: key for key, field in LINK_FIELDS.items()}


def _event_yaml(event: Event) -> dict[str, Any]:
    """One entry of events: as file text."""
    item: dict[str, Any] = {"at": format_duration(event.at_s)}
    if isinstance(event, LinkEvent):
        item["link"] = f"{event.src}{'<->' if event.both else '->'}{event.dst}"
        item["set"] = {}
        for attr, value in event.changes:
            key = _LINK_KEYS[attr]
            item["set"][key] = UNIT_KINDS[LINK_FIELDS[key].kind][1](value)
    elif isinstance(event, EnsembleEvent):
        item.update(ensemble=event.ensemble, action=event.action)
    elif isinstance(event, PartitionEvent):
        item["partition"] = [list(group) for group in event.groups]
    else:
        item["heal"] = True
    return item


def topology_to_yaml(topology: Topology) -> str:
    """YAML text that ``load_topology_text`` reads back to an equal Topology
    (given the same ``base_dir``). Two directions with equal properties are
    written as one 'a<->b' entry; ensembles are a list unless one has
    settings, then a mapping from name to settings ({} for none)."""
    doc: dict[str, Any] = {"name": topology.name}
    if topology.description:
        doc["description"] = topology.description
    doc["seed"] = topology.seed
    if topology.auth_key is not None:
        doc["auth_key"] = topology.auth_key
    if topology.settings:
        ensembles: dict[str, Any] = {}
        for name in topology.ensembles:
            settings = topology.settings.get(name)
            ensembles[name] = {} if settings is None else {
                key: format_size(getattr(settings, key)) if key == "memory"
                else list(getattr(settings, key)) if key == "placement"
                else getattr(settings, key) for key in ENSEMBLE_FIELDS
                if getattr(settings, key) is not None}
        doc["ensembles"] = ensembles
    else:
        doc["ensembles"] = list(topology.ensembles)
    if topology.duration_s is not None:
        doc["duration"] = format_duration(topology.duration_s)
    if topology.capture:
        doc["capture"] = True
    if topology.fast_start:
        doc["fast_start"] = True
    doc["defaults"] = _link_yaml(topology.default_link, LinkSpec())
    links: dict[str, Any] = {}
    done: set[tuple[str, str]] = set()
    for (src, dst), spec in topology.links.items():
        if (src, dst) in done:
            continue
        if topology.links.get((dst, src)) == spec:
            links[f"{src}<->{dst}"] = _link_yaml(spec, topology.default_link)
            done.add((dst, src))
        else:
            links[f"{src}->{dst}"] = _link_yaml(spec, topology.default_link)
        done.add((src, dst))
    if links:
        doc["links"] = links
    flows = []
    for flow in topology.flows:
        item: dict[str, Any] = {"name": flow.name, "from": flow.src, "to": flow.dst}
        if len(flow.sizes) == 1:
            item["size"] = format_size(flow.sizes[0])
        else:
            item["sizes"] = [format_size(s) for s in flow.sizes]
        item["count"] = flow.count
        item["interval"] = format_duration(flow.interval_s)
        item["ensure"] = flow.ensure
        item["deadline"] = format_duration(flow.deadline_s)
        if flow.start_s:
            item["start"] = format_duration(flow.start_s)
        flows.append(item)
    doc["flows"] = flows
    if topology.events:
        doc["events"] = [_event_yaml(event) for event in topology.events]
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=None,
                     allow_unicode=True, width=100)


# --- changing a link by hand (`testbed set`) -----------------------------------

def parse_assignments(words: list[str], source: str = "command line") -> dict[str, str]:
    """``["delay=80ms", "loss=5%"]`` -> ``{"delay": "80ms", "loss": "5%"}``;
    keys must be link fields (LINK_FIELDS), values readable as in a file.
    Raises TopologyError."""
    props: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        key = key.strip()
        if not sep or not key:
            raise TopologyError(source, word, "expected key=value",
                                "write e.g. delay=80ms loss=5% rate=10mbit")
        if key not in LINK_FIELDS:
            raise TopologyError(source, word, f"unknown link field {key!r}",
                                f"use one of {', '.join(sorted(LINK_FIELDS))}")
        if key in props:
            raise TopologyError(source, word, f"{key} is given twice", "give it once")
        props[key] = value.strip()
        _Reader(source).scalar(LINK_FIELDS, props, key, word)   # the value's unit
    if not props:
        raise TopologyError(source, "", "nothing to set",
                            "add key=value pairs, e.g. delay=80ms loss=5%")
    return props


def link_change(ensembles: tuple[str, ...], link: str, props: dict[str, Any],
                current: Callable[[str, str], LinkSpec],
                source: str = "command line") -> dict[tuple[str, str], LinkSpec]:
    """The directed links ``link`` ('a->b' or 'a<->b') names, each with
    ``props`` (link fields as a topology file writes them) laid over its
    spec in force, ``current(src, dst)``. Raises TopologyError."""
    reader = _Reader(source)
    src, dst, both = reader.link_name(link, f"link {link!r}", ensembles, None)
    pairs = [(src, dst), (dst, src)] if both else [(src, dst)]
    return {pair: reader.link(props, link, current(*pair), None) for pair in pairs}


# --- finding files -------------------------------------------------------------

def list_topologies(topo_dir: Path = SHIPPED_DIR) -> list[str]:
    """Names (file stems) of the topology files in ``topo_dir``, sorted."""
    topo_dir = Path(topo_dir)
    if not topo_dir.is_dir():
        return []
    return sorted({p.stem for p in topo_dir.iterdir()
                   if p.suffix in (".yaml", ".yml") and p.is_file()})


def find_topology(name_or_path: str | Path,
                  topo_dir: Path = SHIPPED_DIR) -> Path:
    """A path as given if it is a file, else ``topo_dir/<name>.yaml``.
    Raises TopologyError listing the known names when neither exists."""
    candidate = Path(name_or_path)
    if candidate.is_file():
        return candidate
    for suffix in (".yaml", ".yml"):
        path = Path(topo_dir) / f"{name_or_path}{suffix}"
        if path.is_file():
            return path
    known = ", ".join(list_topologies(topo_dir)) or f"none in {topo_dir}"
    raise TopologyError(str(name_or_path), "", "no such topology file or name",
                        f"give a path to a .yaml file or one of: {known}")
