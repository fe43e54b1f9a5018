"""The editor schema of topology files: generated, shipped, and in step with the loader.

jsonschema is not a dependency, so these tests carry a small validator for
exactly the keywords the generator emits (a test fails if it starts emitting
another one); when jsonschema happens to be installed, it checks too.
"""
from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.spec.model import EnsembleSettings, Flow, LinkSpec, Topology
from testbed.spec.schema import KIND_SCHEMAS, SCHEMA_FILE, schema_text, topology_schema
from testbed.spec.topology import (ENSEMBLE_FIELDS, FLOW_FIELDS, KINDS, LINK_FIELDS,
                                   TOP_FIELDS, UNIT_KINDS, TopologyError, load_topology,
                                   load_topology_text, topology_to_yaml)

REPO = Path(__file__).resolve().parents[2]
TOPO_DIR = REPO / "testbed" / "topologies"
DOCS = REPO / "docs" / "topologies.md"
SHIPPED = sorted(TOPO_DIR.glob("*.yaml"))
SCHEMA = topology_schema()

ANNOTATIONS = {"$schema", "title", "description", "default"}
VALIDATING = {"$ref", "$defs", "type", "const", "pattern", "minLength", "minimum",
              "maximum", "minItems", "uniqueItems", "items", "properties", "required",
              "additionalProperties", "propertyNames", "anyOf", "oneOf", "minProperties"}
# Keywords draft-07 also has: what the VS Code YAML extension implements.
DRAFT7 = ANNOTATIONS | VALIDATING - {"$defs"} | {"definitions"}


# --- a validator for the subset the generator emits ----------------------------

def _same(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, 1.0 is 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _is(instance: Any, kind: str) -> bool:
    number = isinstance(instance, (int, float)) and not isinstance(instance, bool)
    return {
        "null": instance is None,
        "boolean": isinstance(instance, bool),
        "string": isinstance(instance, str),
        "array": isinstance(instance, list),
        "object": isinstance(instance, dict),
        "number": number and math.isfinite(instance),
        "integer": number and math.isfinite(instance) and float(instance).is_integer(),
    }[kind]


def errors(instance: Any, schema: dict | bool = SCHEMA, path: str = "$") -> list[str]:
    if schema is True:
        return []
    if schema is False:
        return [f"{path}: not allowed"]
    out: list[str] = []
    unknown = set(schema) - ANNOTATIONS - VALIDATING
    assert not unknown, f"the test validator does not know {unknown}"
    if "$ref" in schema:
        target: Any = SCHEMA
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        out += errors(instance, target, path)
    if "type" in schema and not _is(instance, schema["type"]):
        return out + [f"{path}: {instance!r} is not of type {schema['type']}"]
    if "const" in schema and not _same(instance, schema["const"]):
        out.append(f"{path}: {instance!r} is not {schema['const']!r}")
    if isinstance(instance, str):
        if "pattern" in schema and not re.search(schema["pattern"], instance):
            out.append(f"{path}: {instance!r} does not match {schema['pattern']}")
        if len(instance) < schema.get("minLength", 0):
            out.append(f"{path}: {instance!r} is too short")
    if _is(instance, "number"):
        if "minimum" in schema and instance < schema["minimum"]:
            out.append(f"{path}: {instance} < {schema['minimum']}")
        if "maximum" in schema and instance > schema["maximum"]:
            out.append(f"{path}: {instance} > {schema['maximum']}")
    if isinstance(instance, list):
        if len(instance) < schema.get("minItems", 0):
            out.append(f"{path}: fewer than {schema['minItems']} items")
        if schema.get("uniqueItems") and any(
                _same(x, y) for i, x in enumerate(instance) for y in instance[i + 1:]):
            out.append(f"{path}: items are not unique")
        for i, item in enumerate(instance):
            out += errors(item, schema.get("items", True), f"{path}[{i}]")
    if isinstance(instance, dict):
        properties = schema.get("properties", {})
        if len(instance) < schema.get("minProperties", 0):
            out.append(f"{path}: fewer than {schema['minProperties']} properties")
        for key in schema.get("required", []):
            if key not in instance:
                out.append(f"{path}: {key!r} is required")
        for key, value in instance.items():
            if not isinstance(key, str):
                out.append(f"{path}: key {key!r} is not a string")
                continue
            out += errors(key, schema.get("propertyNames", True), f"{path} key {key!r}")
            sub = properties.get(key, schema.get("additionalProperties", True))
            out += errors(value, sub, f"{path}.{key}")
    if "anyOf" in schema:
        results = [errors(instance, s, path) for s in schema["anyOf"]]
        if all(results):
            out.append(f"{path}: matches none of anyOf ({results})")
    if "oneOf" in schema:
        passing = sum(not errors(instance, s, path) for s in schema["oneOf"])
        if passing != 1:
            out.append(f"{path}: matches {passing} of oneOf, not exactly 1")
    return out


def keywords(schema: Any) -> set[str]:
    """Every keyword used anywhere in ``schema`` (not property or $defs names)."""
    if not isinstance(schema, dict):
        return set()
    found = set(schema)
    for key, value in schema.items():
        if key in ("properties", "$defs"):
            for sub in value.values():
                found |= keywords(sub)
        elif key in ("anyOf", "oneOf"):
            for sub in value:
                found |= keywords(sub)
        elif key in ("items", "additionalProperties", "propertyNames"):
            found |= keywords(value)
    return found


# --- the shipped file ----------------------------------------------------------

def test_shipped_schema_is_exactly_what_the_generator_writes():
    shipped = SCHEMA_FILE.read_text(encoding="utf-8")
    assert shipped == schema_text(), (
        "testbed/topologies/topology.schema.json is stale; regenerate it with "
        "`python -m testbed.spec.schema > testbed/topologies/topology.schema.json`")
    assert json.loads(shipped) == SCHEMA


def test_schema_uses_only_keywords_known_here_and_to_draft7_editors():
    used = keywords(SCHEMA)
    assert used <= ANNOTATIONS | VALIDATING, used - ANNOTATIONS - VALIDATING
    # $defs is only a container: the $refs into it are plain JSON pointers.
    assert used - {"$defs"} <= DRAFT7
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_every_field_of_the_loader_is_in_the_schema_and_nothing_else():
    assert set(SCHEMA["properties"]) == set(TOP_FIELDS)
    assert set(SCHEMA["$defs"]["link"]["properties"]) == set(LINK_FIELDS)
    assert set(SCHEMA["$defs"]["flow"]["properties"]) == set(FLOW_FIELDS)
    assert set(SCHEMA["$defs"]["ensemble"]["properties"]) == set(ENSEMBLE_FIELDS)
    assert "required" not in SCHEMA["$defs"]["ensemble"]
    assert SCHEMA["required"] == ["ensembles"]
    assert SCHEMA["$defs"]["flow"]["required"] == ["from", "to", "count", "interval"]
    assert set(KIND_SCHEMAS) == set(KINDS)
    for pattern in re.findall(r'"pattern": "(.*?)"', schema_text()):
        re.compile(json.loads(f'"{pattern}"'))


def test_table_defaults_are_the_model_defaults():
    for field in LINK_FIELDS.values():
        parse = UNIT_KINDS[field.kind][0]
        assert parse(field.default) == getattr(LinkSpec(), field.attr), field.key
    flow = Flow("f", "a", "b", (1,), 1, 0.0, False)
    assert UNIT_KINDS["duration"][0](FLOW_FIELDS["deadline"].default) == flow.deadline_s
    assert UNIT_KINDS["duration"][0](FLOW_FIELDS["start"].default) == flow.start_s
    assert FLOW_FIELDS["ensure"].default is flow.ensure is False
    t = load_topology_text("ensembles: [a]\n", "t.yaml")
    assert (t.seed, t.description) == (TOP_FIELDS["seed"].default,
                                       TOP_FIELDS["description"].default)


def test_docs_mention_every_field():
    docs = DOCS.read_text(encoding="utf-8")
    for table in (TOP_FIELDS, LINK_FIELDS, FLOW_FIELDS, ENSEMBLE_FIELDS):
        for key in table:
            assert f"{key}:" in docs or f"`{key}`" in docs, key


# --- the schema agrees with the loader -----------------------------------------

@pytest.mark.parametrize("path", SHIPPED + sorted((REPO / "tests" / "data" / "cli")
                                                  .glob("*.yaml")), ids=lambda p: p.name)
def test_every_topology_file_validates_against_the_schema(path):
    assert errors(yaml.safe_load(path.read_text(encoding="utf-8"))) == []
    written = topology_to_yaml(load_topology(path))
    assert errors(yaml.safe_load(written)) == []


def test_the_docs_example_loads_and_validates():
    docs = DOCS.read_text(encoding="utf-8")
    example = re.search(r"## Format\n\n```yaml\n(.*?)```", docs, re.S).group(1)
    load_topology_text(example, "edge-cloud.yaml")
    assert errors(yaml.safe_load(example)) == []


def test_the_docs_programs_example_loads_and_validates():
    docs = DOCS.read_text(encoding="utf-8")
    example = re.search(r"### Programs and apps.*?```yaml\n(.*?)```", docs, re.S).group(1)
    t = load_topology_text(example, "programs.yaml")
    assert set(t.settings) == {"sensor", "edge"} and t.duration_s == 30.0
    assert errors(yaml.safe_load(example)) == []


BASE = """
ensembles: [a, b, c]
defaults: {delay: 20ms, loss: 2%, rate: 100mbit}
links:
  a->b: {loss: 5%, jitter: 1ms}
  b<->c:
flows:
  - {name: f1, from: a, to: b, size: 1200, count: 50, interval: 100ms}
"""


@pytest.mark.parametrize("change", [
    ("delay: 20ms", "delay: 20 MS"), ("delay: 20ms", "delay: 0"), ("delay: 20ms", "delay: '0'"),
    ("delay: 20ms", "delay: 1.5e-3s"), ("delay: 20ms", "delay: 500µs"),
    ("loss: 2%", "loss: 2"), ("loss: 2%", "loss: 0.5 %"), ("rate: 100mbit", "rate: 10Mbit/s"),
    ("rate: 100mbit", "rate: unlimited"), ("rate: 100mbit", "rate: null"),
    ("size: 1200", "size: 200KiB"), ("size: 1200", "sizes: [64, 1.5KB, 1MiB]"),
    ("interval: 100ms", "interval: 100ms, ensure: true, deadline: 2min, start: 0"),
    ("name: f1, ", ""), ("ensembles:", "seed: 3\nauth_key: k\ndescription: d\nensembles:"),
    ("[a, b, c]", "{a: {run: python3 a.py --rate 10}, b: {}, c: }\nduration: 30s"),
    ("[a, b, c]", "{a: {app: apps/pipeline.py:edge}, b: {app: b.py, run: ./b.sh}, c: {}}\n"
                  "duration: 1.5min"),
    ("[a, b, c]", "{a: {app: 'x.py:défaut'}, b: {app: ../up/x.py}, c: {run: 'yes'}}\n"
                  "duration: 2s"),
    ("[a, b, c]", "\n  a:\n  b: {}\n  c:\nduration: 10s"),
    ("[a, b, c]", "[a, b, c]\nduration: 10s"),
])
def test_schema_accepts_what_the_loader_accepts(change):
    text = BASE.replace(*change)
    assert text != BASE
    load_topology_text(text, "t.yaml")
    assert errors(yaml.safe_load(text)) == []


@pytest.mark.parametrize("change", [
    ("ensembles:", "ensemble:"), ("delay: 20ms", "latency: 20ms"),
    ("interval: 100ms", "interval: 100ms, every: 1s"), ("count: 50, ", ""),
    ("size: 1200", "size: 1200, sizes: [1]"), ("size: 1200, ", ""),
    ("delay: 20ms", "delay: 20"), ("delay: 20ms", "delay: -5ms"),
    ("delay: 20ms", "delay: 20 parsecs"), ("loss: 2%", "loss: 2x"),
    ("loss: 2%", "loss: 101"), ("rate: 100mbit", "rate: 10mbps"),
    ("rate: 100mbit", "rate: 10"), ("a->b:", "a=>b:"), ("[a, b, c]", "[a, b, a]"),
    ("[a, b, c]", "[a, b, 1c]"), ("name: f1", "name: 'f 1'"), ("count: 50", "count: 0"),
    ("count: 50", "count: '50'"), ("size: 1200", "size: 0"), ("size: 1200", "size: 100000000"),
    ("interval: 100ms", "interval: 100ms, ensure: 'yes'"), ("[a, b, c]", "[]"),
    ("flows:", "seed: x\nflows:"),
    ("[a, b, c]", "{}"), ("[a, b, c]", "{a: {runn: x}, b: {}, c: {}}\nduration: 1s"),
    ("[a, b, c]", "{a: {run: ''}, b: {}, c: {}}\nduration: 1s"),
    ("[a, b, c]", "{a: {run: '  '}, b: {}, c: {}}\nduration: 1s"),
    ("[a, b, c]", "{a: {app: a.txt}, b: {}, c: {}}\nduration: 1s"),
    ("[a, b, c]", "{a: {app: 'a.py:1f'}, b: {}, c: {}}\nduration: 1s"),
    ("[a, b, c]", "{a: {app: 'a.py:'}, b: {}, c: {}}\nduration: 1s"),
    ("[a, b, c]", "{a: {app: 'a.py:f-g'}, b: {}, c: {}}\nduration: 1s"),
    ("[a, b, c]", "{a: python3 a.py, b: {}, c: {}}\nduration: 1s"),
    ("[a, b, c]", "{a: {run: 3}, b: {}, c: {}}\nduration: 1s"),
    ("[a, b, c]", "{a: {}, b: {}, 1c: {}}"), ("[a, b, c]", "[a, b, c]\nduration: 30"),
])
def test_schema_refuses_shape_errors_the_loader_refuses(change):
    text = BASE.replace(*change)
    assert text != BASE
    with pytest.raises(TopologyError):
        load_topology_text(text, "t.yaml")
    assert errors(yaml.safe_load(text)) != []


link_values = st.builds(
    LinkSpec, delay_s=st.floats(0, 2), jitter_s=st.floats(0, 0.1), loss=st.floats(0, 1),
    rate_bps=st.none() | st.integers(1, 10**10).map(float),
    duplicate=st.floats(0, 1), corrupt=st.floats(0, 1))


settings_values = st.builds(
    EnsembleSettings,
    run=st.none() | st.text(min_size=1).filter(str.strip),
    app=st.none() | st.sampled_from(["a.py", "apps/pipeline.py:edge", "x/y.py:main"]))


@settings(max_examples=40)
@given(default=link_values, ab=link_values,
       sizes=st.lists(st.integers(1, 64 * 2**20), min_size=1, max_size=3),
       interval=st.floats(0, 100), count=st.integers(1, 10**6),
       a=settings_values, duration=st.none() | st.floats(0.001, 1e4))
def test_any_written_topology_validates(default, ab, sizes, interval, count, a, duration):
    programs = {"a": a} if a.run or a.app else {}
    t = Topology(name="h", ensembles=("a", "b"), default_link=default,
                 links={("a", "b"): ab},
                 flows=(Flow("f", "a", "b", tuple(sizes), count, interval, True),),
                 settings=programs, duration_s=30.0 if programs else duration)
    assert errors(yaml.safe_load(topology_to_yaml(t))) == []


def test_jsonschema_agrees_when_installed():
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for path in SHIPPED:
        validator.validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    bad = yaml.safe_load(textwrap.dedent(BASE.replace("delay: 20ms", "delay: 20")))
    assert not validator.is_valid(bad)
    programs = "{a: {run: python3 a.py}, b: {app: 'x/b.py:edge'}, c: }\nduration: 5s"
    assert validator.is_valid(yaml.safe_load(BASE.replace("[a, b, c]", programs)))
    for wrong in ("{a: {app: b.txt}, b: {}, c: {}}", "{a: {runn: x}, b: {}, c: {}}", "{}"):
        assert not validator.is_valid(yaml.safe_load(BASE.replace("[a, b, c]", wrong)))
