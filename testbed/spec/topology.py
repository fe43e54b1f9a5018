"""Topology files: YAML text -> validated ``testbed.spec.model.Topology`` and back.

This module owns the file format (see docs/topologies.md): field names,
units, defaults and every validation rule. It is pure: it reads text, builds
frozen dataclasses, and never creates hosts, links or processes, so a bad
file stops an experiment before anything is started. Every user mistake
raises ``TopologyError`` naming the file, the entry and the fix.
"""
from __future__ import annotations

import logging
import re
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Callable

import yaml

from testbed.spec.model import Flow, LinkSpec, Topology
from testbed.spec.units import (UnitError, format_duration, format_percent,
                           format_rate, format_size, parse_duration,
                           parse_percent, parse_rate, parse_size)

log = logging.getLogger(__name__)

# Largest payload a flow may ask for. The engine keeps a whole message in
# memory on both ends; 64 MiB is far above any TTPython token and still small
# enough that a typo ("300MB" for "300KB") is caught instead of swapping.
MAX_MESSAGE_SIZE = 64 * 2**20
# Ensemble names become container names, hostnames and netns names; keep to
# what all three accept, and short enough for derived interface names.
ENSEMBLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
FLOW_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
DEFAULT_FLOW = Flow(name="", src="", dst="", sizes=(1,), count=1,
                    interval_s=0.0, ensure=False)

TOP_FIELDS = {"name", "description", "seed", "auth_key", "ensembles",
              "defaults", "links", "flows"}
FLOW_FIELDS = {"name", "from", "to", "size", "sizes", "count", "interval",
               "ensure", "deadline", "start"}
# YAML field -> (LinkSpec field, parser, formatter)
LINK_FIELDS: dict[str, tuple[str, Callable[[Any], Any], Callable[[Any], Any]]] = {
    "delay": ("delay_s", parse_duration, format_duration),
    "jitter": ("jitter_s", parse_duration, format_duration),
    "loss": ("loss", parse_percent, format_percent),
    "rate": ("rate_bps", parse_rate, format_rate),
    "duplicate": ("duplicate", parse_percent, format_percent),
    "corrupt": ("corrupt", parse_percent, format_percent),
}


class TopologyError(ValueError):
    """A topology file is wrong. ``source``/``entry``/``fix`` say where and how."""

    def __init__(self, source: str, entry: str, problem: str, fix: str) -> None:
        where = f"{source}: {entry}" if entry else source
        super().__init__(f"{where}: {problem}. Fix: {fix}")
        self.source, self.entry, self.problem, self.fix = source, entry, problem, fix


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: plain YAML silently keeps the
    last one, which would hide a second ``a->b`` override."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode,
                       deep: bool = False) -> dict:
    seen: dict[Any, yaml.Mark] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark,
                f"found duplicate key {key!r} (first at line "
                f"{seen[key].line + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _Reader:
    """Validation context for one file: knows its name for error messages."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, entry: str, problem: str, fix: str) -> TopologyError:
        return TopologyError(self.source, entry, problem, fix)

    def mapping(self, value: Any, entry: str, allowed: set[str],
                example: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(entry, f"expected a mapping, got {value!r}",
                            f"write it as e.g. {example}")
        for key in value:
            if key not in allowed:
                raise self.fail(f"{entry}.{key}" if entry else str(key),
                                f"unknown field {key!r}",
                                f"remove it or use one of {', '.join(sorted(allowed))}")
        return value

    def unit(self, parser: Callable[[Any], Any], value: Any, entry: str) -> Any:
        try:
            return parser(value)
        except UnitError as exc:
            raise self.fail(entry, exc.problem, exc.fix) from None

    def integer(self, value: Any, entry: str, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(entry, f"{value!r} is not a whole number",
                            f"write an integer >= {minimum}")
        if value < minimum:
            raise self.fail(entry, f"{value} is below {minimum}",
                            f"write an integer >= {minimum}")
        return value

    def link(self, value: Any, entry: str, base: LinkSpec) -> LinkSpec:
        """Link properties in ``value`` laid over ``base``."""
        if value is None:
            return base
        props = self.mapping(value, entry, set(LINK_FIELDS),
                             "{delay: 20ms, loss: 2%}")
        spec = {f.name: getattr(base, f.name) for f in fields(LinkSpec)}
        for key, raw in props.items():
            attr, parser, _ = LINK_FIELDS[key]
            spec[attr] = self.unit(parser, raw, f"{entry}.{key}")
            if attr in ("delay_s", "jitter_s") and spec[attr] < 0:
                raise self.fail(f"{entry}.{key}", f"{raw!r} is negative",
                                f"write a {key} >= 0, e.g. 20ms")
        return LinkSpec(**spec)

    def ensembles(self, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail("ensembles", f"expected a non-empty list, got {value!r}",
                            "write e.g. ensembles: [a, b]")
        names: list[str] = []
        for i, name in enumerate(value):
            entry = f"ensembles[{i}]"
            if not isinstance(name, str):
                raise self.fail(entry, f"{name!r} is not a name (YAML read it "
                                f"as {type(name).__name__})",
                                f"quote it: '{name}', or pick a name starting "
                                "with a letter")
            if not ENSEMBLE_NAME.match(name):
                raise self.fail(entry, f"{name!r} is not a valid ensemble name",
                                "start with a letter; use letters, digits, "
                                "'-' or '_'; at most 32 characters")
            if name in names:
                raise self.fail(entry, f"duplicate ensemble name {name!r}",
                                "give every ensemble a different name")
            names.append(name)
        return tuple(names)

    def endpoint(self, name: Any, entry: str, ensembles: tuple[str, ...]) -> str:
        if name not in ensembles:
            raise self.fail(entry, f"unknown ensemble {name!r}",
                            f"add it to ensembles or use one of {', '.join(ensembles)}")
        return name

    def links(self, value: Any, ensembles: tuple[str, ...],
              default: LinkSpec) -> dict[tuple[str, str], LinkSpec]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail("links", f"expected a mapping, got {value!r}",
                            "write e.g. links: {a->b: {loss: 5%}}")
        symmetric: dict[tuple[str, str], LinkSpec] = {}
        directed: dict[tuple[str, str], tuple[str, Any]] = {}
        for key, props in value.items():
            entry = f"links[{key!r}]"
            text = str(key)
            sep = "<->" if "<->" in text else "->" if "->" in text else None
            parts = [p.strip() for p in text.split(sep)] if sep else []
            if len(parts) != 2:
                raise self.fail(entry, f"{text!r} is not a link",
                                "name a link 'a->b' (one direction) or "
                                "'a<->b' (both directions)")
            src = self.endpoint(parts[0], entry, ensembles)
            dst = self.endpoint(parts[1], entry, ensembles)
            if src == dst:
                raise self.fail(entry, "a link from an ensemble to itself",
                                "name two different ensembles")
            if sep == "->":
                if (src, dst) in directed:
                    raise self.fail(entry, f"link {src}->{dst} is given twice",
                                    "keep one entry per direction")
                directed[(src, dst)] = (entry, props)
                continue
            spec = self.link(props, entry, default)
            for pair in ((src, dst), (dst, src)):
                if pair in symmetric:
                    raise self.fail(entry, f"link {src}<->{dst} is given twice",
                                    "keep one of 'a<->b' and 'b<->a'")
                symmetric[pair] = spec
        # A one-way entry is more specific than a two-way one, so it wins
        # (documented): 'a<->b' sets both, 'a->b' then refines one side.
        links = dict(symmetric)
        for pair, (entry, props) in directed.items():
            links[pair] = self.link(props, entry, symmetric.get(pair, default))
        return links

    def flow(self, value: Any, index: int, ensembles: tuple[str, ...]) -> Flow:
        entry = f"flows[{index}]"
        raw = self.mapping(value, entry, FLOW_FIELDS,
                           "{from: a, to: b, size: 1200, count: 50, interval: 100ms}")
        name = raw.get("name")
        if name is not None:
            entry = f"flows[{index}] ({name})"
        for required in ("from", "to", "count", "interval"):
            if required not in raw:
                raise self.fail(f"{entry}.{required}", "missing required field",
                                f"add '{required}:' to the flow")
        src = self.endpoint(raw["from"], f"{entry}.from", ensembles)
        dst = self.endpoint(raw["to"], f"{entry}.to", ensembles)
        if src == dst:
            raise self.fail(entry, f"flow from {src!r} to itself",
                            "send to a different ensemble")
        if ("size" in raw) == ("sizes" in raw):
            raise self.fail(f"{entry}.size", "give exactly one of 'size' and 'sizes'",
                            "write size: 1200, or sizes: [64, 128, 256]")
        if "size" in raw:
            sizes = (self.size(raw["size"], f"{entry}.size"),)
        else:
            listed = raw["sizes"]
            if not isinstance(listed, list) or not listed:
                raise self.fail(f"{entry}.sizes", f"expected a non-empty list, "
                                f"got {listed!r}", "write sizes: [64, 128, 256]")
            sizes = tuple(self.size(s, f"{entry}.sizes[{i}]")
                          for i, s in enumerate(listed))
        ensure = raw.get("ensure", DEFAULT_FLOW.ensure)
        if not isinstance(ensure, bool):
            raise self.fail(f"{entry}.ensure", f"{ensure!r} is not true/false",
                            "write ensure: true or ensure: false")
        deadline = self.unit(parse_duration, raw.get("deadline", "30s"),
                             f"{entry}.deadline")
        if deadline <= 0:
            raise self.fail(f"{entry}.deadline", "deadline must be positive",
                            "write e.g. deadline: 10s")
        interval = self.unit(parse_duration, raw["interval"], f"{entry}.interval")
        start = self.unit(parse_duration, raw.get("start", 0), f"{entry}.start")
        for key, val in (("interval", interval), ("start", start)):
            if val < 0:
                raise self.fail(f"{entry}.{key}", f"{key} is negative",
                                f"write a {key} >= 0")
        if name is None:
            name = f"{src}-{dst}"
        elif not isinstance(name, str) or not FLOW_NAME.match(name):
            raise self.fail(f"{entry}.name", f"{name!r} is not a valid flow name",
                            "use letters, digits, '-', '_', '.', ':' (max 64)")
        return Flow(name=name, src=src, dst=dst, sizes=sizes,
                    count=self.integer(raw["count"], f"{entry}.count", 1),
                    interval_s=interval, ensure=ensure, deadline_s=deadline,
                    start_s=start)

    def size(self, value: Any, entry: str) -> int:
        size = self.unit(parse_size, value, entry)
        if size < 1:
            raise self.fail(entry, f"size {value!r} is below 1 byte",
                            "write a size of at least 1 byte")
        if size > MAX_MESSAGE_SIZE:
            raise self.fail(entry, f"size {value!r} is over the 64 MiB limit",
                            "send smaller messages (did you mean KB?)")
        return size

    def flows(self, value: Any, ensembles: tuple[str, ...]) -> tuple[Flow, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.fail("flows", f"expected a list, got {value!r}",
                            "write flows as a list of '- from: a ...' items")
        flows = [self.flow(item, i, ensembles) for i, item in enumerate(value)]
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
                                    "give every flow a different name")
                k = 2
                while f"{name}-{k}" in seen:
                    k += 1
                name = f"{name}-{k}"
                flow = replace(flow, name=name)
            seen[name] = i
            result.append(flow)
        return tuple(result)


def load_topology_text(text: str, source_name: str = "<text>") -> Topology:
    """Parse and validate topology YAML; ``source_name`` appears in errors and
    its stem is the default topology name. Raises TopologyError."""
    reader = _Reader(source_name)
    try:
        doc = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - safe loader subclass
    except yaml.YAMLError as exc:
        raise reader.fail("", f"not valid YAML ({exc})",
                          "fix the YAML syntax at the line shown") from None
    doc = reader.mapping(doc, "", TOP_FIELDS, "a mapping with ensembles: and flows:")
    if "ensembles" not in doc:
        raise reader.fail("ensembles", "missing required field",
                          "list the ensembles, e.g. ensembles: [a, b]")
    name = doc.get("name", Path(source_name).stem)
    if not isinstance(name, str) or not FLOW_NAME.match(name):
        raise reader.fail("name", f"{name!r} is not a valid topology name",
                          "use letters, digits, '-', '_', '.'")
    seed = doc.get("seed", 1)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise reader.fail("seed", f"{seed!r} is not an integer", "write e.g. seed: 1")
    auth_key = doc.get("auth_key")
    if auth_key is not None and (not isinstance(auth_key, str) or not auth_key):
        raise reader.fail("auth_key", f"{auth_key!r} is not a non-empty string",
                          "quote the key, e.g. auth_key: 'secret', or remove it")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise reader.fail("description", "expected text", "quote the description")
    ensembles = reader.ensembles(doc["ensembles"])
    default = reader.link(doc.get("defaults"), "defaults", LinkSpec())
    return Topology(name=name, ensembles=ensembles, default_link=default,
                    links=reader.links(doc.get("links"), ensembles, default),
                    flows=reader.flows(doc.get("flows"), ensembles),
                    seed=seed, auth_key=auth_key, description=description)


def load_topology(path: Path) -> Topology:
    """Read and validate one topology file. Raises TopologyError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError(str(path), "", f"cannot read the file ({exc.strerror})",
                            "check the path; 'list' shows the shipped topologies") from None
    topology = load_topology_text(text, str(path))
    log.debug("loaded topology %s: %d ensembles, %d flows", topology.name,
              len(topology.ensembles), len(topology.flows))
    return topology


def _link_yaml(spec: LinkSpec, base: LinkSpec) -> dict[str, Any]:
    """The properties of ``spec`` that differ from ``base``, as file text."""
    out: dict[str, Any] = {}
    for key, (attr, _, fmt) in LINK_FIELDS.items():
        if getattr(spec, attr) != getattr(base, attr):
            out[key] = fmt(getattr(spec, attr))
    return out


def topology_to_yaml(topology: Topology) -> str:
    """YAML text that ``load_topology_text`` reads back to an equal Topology.
    Two directions with equal properties are written as one 'a<->b' entry."""
    doc: dict[str, Any] = {"name": topology.name}
    if topology.description:
        doc["description"] = topology.description
    doc["seed"] = topology.seed
    if topology.auth_key is not None:
        doc["auth_key"] = topology.auth_key
    doc["ensembles"] = list(topology.ensembles)
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
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None,
                          allow_unicode=True, width=100)


def list_topologies(topo_dir: Path = Path("topologies")) -> list[str]:
    """Names (file stems) of the topology files in ``topo_dir``, sorted."""
    topo_dir = Path(topo_dir)
    if not topo_dir.is_dir():
        return []
    return sorted({p.stem for p in topo_dir.iterdir()
                   if p.suffix in (".yaml", ".yml") and p.is_file()})


def find_topology(name_or_path: str | Path,
                  topo_dir: Path = Path("topologies")) -> Path:
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
