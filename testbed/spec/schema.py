"""JSON Schema (draft 2020-12) of topology files, for editors.

This module owns turning the loader's field tables (``TOP_FIELDS``,
``LINK_FIELDS``, ``FLOW_FIELDS``, ``ENSEMBLE_FIELDS``, ``EVENT_FIELDS``
in ``testbed.spec.topology``) and the unit tables of ``testbed.spec.units``
into a schema. It must never hold a second
list of fields, units or names: every property, default, unit and pattern
comes from those modules, and tests/unit/test_topology_schema.py fails when
the shipped ``testbed/topologies/topology.schema.json`` differs from what this
generates. The schema checks the shape of a file (fields, types, unit
syntax, name syntax); ranges, references between entries and duplicates
stay the loader's job, and the loader has the last word.

Regenerate after changing a field table:

    python -m testbed.spec.schema > testbed/topologies/topology.schema.json
"""
from __future__ import annotations

import json
import sys
from typing import Any, Callable

from testbed.spec.model import ENSEMBLE_ACTIONS
from testbed.spec.topology import (APP_PATTERN, ENSEMBLE_FIELDS, ENSEMBLE_NAME_PATTERN,
                                   EVENT_FIELDS, EVENT_KEYS, FLOW_FIELDS, FLOW_NAME_PATTERN,
                                   FLOW_SIZE_KEYS, KINDS, LINK_FIELDS, LINK_SEPARATORS,
                                   MAX_MESSAGE_SIZE, SHIPPED_DIR, TOP_FIELDS, Field)
from testbed.spec.topology import MIN_CPUS, MIN_MEMORY, PLACEMENT_PATTERN
from testbed.spec.units import (DURATION_UNITS, RATE_UNITS, SIZE_UNITS,
                                UNSIGNED_NUMBER)

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: Where the schema ships: beside the shipped topologies (package data).
SCHEMA_FILE = SHIPPED_DIR / "topology.schema.json"


def _any_case(unit: str) -> str:
    """A regex for ``unit`` in any letter case: ECMA-262 patterns, which
    JSON Schema uses, have no case-insensitive flag. Units are matched the
    way the parser does: lower-cased, then looked up."""
    out = []
    for char in unit:
        variants = sorted({char, char.upper()} - {""})
        variants = [v for v in variants if len(v) == 1 and v.lower() == char]
        if len(variants) > 1:
            out.append("[" + "".join(variants) + "]")
        else:
            out.append("\\" + char if char in r"\^$.|?*+()[]{}/" else char)
    return "".join(out)


def _units(units: Any) -> str:
    # Longest first, so no unit's prefix ("m" of "ms") shadows it.
    return "(?:" + "|".join(_any_case(u) for u in sorted(units, key=lambda u: (-len(u), u))) \
        + ")"


def _text(pattern: str) -> dict[str, Any]:
    """A string of number-and-unit shape; surrounding blanks allowed, as in the parser."""
    return {"type": "string", "pattern": rf"^\s*{pattern}\s*$"}


_NUMBER = rf"\+?{UNSIGNED_NUMBER}"  # negative values are refused everywhere
_ZERO = r"\+?(?:0+\.?0*|\.0+)(?:[eE][-+]?\d+)?"


def _duration(_: Field) -> dict[str, Any]:
    return {"anyOf": [{"const": 0},
                      _text(rf"(?:{_NUMBER}\s*{_units(DURATION_UNITS)}|{_ZERO})")]}


def _percent(_: Field) -> dict[str, Any]:
    return {"anyOf": [{"type": "number", "minimum": 0, "maximum": 100},
                      _text(rf"{_NUMBER}\s*%?")]}


def _rate(_: Field) -> dict[str, Any]:
    return {"anyOf": [{"type": "null"},
                      _text(f"(?:{_any_case('none')}|{_any_case('unlimited')})"),
                      _text(rf"{_NUMBER}\s*{_units(RATE_UNITS)}(?:/{_any_case('s')})?")]}


def _size() -> dict[str, Any]:
    return {"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_MESSAGE_SIZE},
                      _text(rf"{_NUMBER}\s*{_units(SIZE_UNITS)}?")]}


def _name(pattern: str) -> dict[str, Any]:
    return {"type": "string", "pattern": f"^{pattern}$"}


def _integer(field: Field) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "integer"}
    if field.minimum is not None:
        out["minimum"] = field.minimum
    return out


def _null_or(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _link_name_pattern() -> str:
    name = f"\\s*{ENSEMBLE_NAME_PATTERN}\\s*"
    separators = "|".join(LINK_SEPARATORS)
    return f"^{name}(?:{separators}){name}$"


def _links(_: Field) -> dict[str, Any]:
    return _null_or({"type": "object",
                     "propertyNames": {"pattern": _link_name_pattern()},
                     "additionalProperties": _null_or({"$ref": "#/$defs/link"})})


def _ensembles(_: Field) -> dict[str, Any]:
    """A list of names, or a mapping from name to settings (null: none)."""
    name = _name(ENSEMBLE_NAME_PATTERN)
    return {"oneOf": [
        {"type": "array", "minItems": 1, "uniqueItems": True, "items": name},
        {"type": "object", "minProperties": 1, "propertyNames": name,
         "additionalProperties": _null_or({"$ref": "#/$defs/ensemble"})},
    ]}


# One schema per value kind of testbed.spec.topology.KINDS.
KIND_SCHEMAS: dict[str, Callable[[Field], dict[str, Any]]] = {
    "duration": _duration,
    "percent": _percent,
    "rate": _rate,
    "size": lambda _: _size(),
    "text": lambda _: {"type": "string"},
    "secret": lambda _: {"type": "string", "minLength": 1},
    "name": lambda _: _name(FLOW_NAME_PATTERN),
    "integer": _integer,
    "boolean": lambda _: {"type": "boolean"},
    "ensemble": lambda _: _name(ENSEMBLE_NAME_PATTERN),
    "ensembles": _ensembles,
    "sizes": lambda _: {"type": "array", "minItems": 1, "items": _size()},
    "link": lambda _: _null_or({"$ref": "#/$defs/link"}),
    "links": _links,
    "flows": lambda _: _null_or({"type": "array", "items": {"$ref": "#/$defs/flow"}}),
    # A blank command runs nothing: at least one non-blank character.
    "command": lambda _: {"type": "string", "minLength": 1, "pattern": r"\S"},
    "app": lambda _: _name(APP_PATTERN),
    # A device-like host (ENSEMBLE_FIELDS cpus, memory).
    "cpus": lambda _: {"type": "number", "minimum": MIN_CPUS},
    "memory": lambda _: {"anyOf": [
        {"type": "integer", "minimum": MIN_MEMORY},
        _text(rf"{_NUMBER}\s*{_units(SIZE_UNITS)}?")]},
    # Swarm placement constraints (ENSEMBLE_FIELDS placement).
    "placement": lambda _: {"type": "array", "minItems": 1,
                            "items": {"type": "string", "pattern": PLACEMENT_PATTERN}},
    # The fault timeline (EVENT_FIELDS).
    "events": lambda _: _null_or({"type": "array", "items": {"$ref": "#/$defs/event"}}),
    "link_name": lambda _: {"type": "string", "pattern": _link_name_pattern()},
    "action": lambda _: _name("(?:" + "|".join(ENSEMBLE_ACTIONS) + ")"),
    "groups": lambda _: {"type": "array", "minItems": 2, "items": {
        "type": "array", "minItems": 1, "uniqueItems": True,
        "items": _name(ENSEMBLE_NAME_PATTERN)}},
}


def _check_kinds() -> None:
    missing = set(KINDS) ^ set(KIND_SCHEMAS)
    if missing:
        raise RuntimeError(f"kinds without a schema, or schemas without a kind: {missing}")


def _object(table: dict[str, Field], title: str) -> dict[str, Any]:
    properties = {}
    for field in table.values():
        prop = {"description": field.doc, **KIND_SCHEMAS[field.kind](field)}
        if field.default is not None:
            prop["default"] = field.default
        properties[field.key] = prop
    out: dict[str, Any] = {"title": title, "type": "object", "properties": properties}
    required = [f.key for f in table.values() if f.required]
    if required:
        out["required"] = required
    out["additionalProperties"] = False
    return out


def topology_schema() -> dict[str, Any]:
    """The schema of a topology file, as a JSON-ready dict."""
    _check_kinds()
    flow = _object(FLOW_FIELDS, "flow")
    flow["oneOf"] = [{"required": [key]} for key in FLOW_SIZE_KEYS]
    event = _object(EVENT_FIELDS, "event")
    # Exactly one thing to do; a key of another group makes two match, or
    # (alone, without its partner) none.
    event["oneOf"] = [{"required": list(keys)} for keys in EVENT_KEYS]
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "ttnet testbed topology",
        "description": "A testbed topology file (docs/topologies.md). Generated by "
                       "`python -m testbed.spec.schema`; do not edit by hand.",
        **_object(TOP_FIELDS, "ttnet testbed topology"),
        "$defs": {"link": _object(LINK_FIELDS, "link properties"), "flow": flow,
                  "ensemble": _object(ENSEMBLE_FIELDS, "ensemble settings"),
                  "event": event},
    }


def schema_text() -> str:
    """The shipped file's exact text."""
    return json.dumps(topology_schema(), indent=2, ensure_ascii=True) + "\n"


def main() -> int:
    sys.stdout.write(schema_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
