"""Human units in topology files: durations, percentages, rates, sizes.

This module owns parsing ``20ms``/``2%``/``10mbit``/``200KB`` into plain
numbers (seconds, fractions, bit/s, bytes) and formatting them back so a
topology survives a YAML round trip bit-exactly. It never reads files and
never knows about topologies: callers turn ``UnitError`` into an error that
names the file and the entry.

Parsing goes through ``fractions.Fraction`` so ``1.5ms`` becomes the double
nearest to 0.0015, not ``1.5 * 0.001`` with its extra rounding step; that is
what makes ``parse(format(x)) == x`` hold.
"""
from __future__ import annotations

import decimal
import math
import re
from fractions import Fraction

# Unit -> multiplier to the base unit. Keys are lower case; input is matched
# case-insensitively so "10Mbit" and "200kb" work.
DURATION_UNITS: dict[str, Fraction] = {
    "ns": Fraction(1, 10**9),
    "us": Fraction(1, 10**6),
    "µs": Fraction(1, 10**6),
    "ms": Fraction(1, 10**3),
    "s": Fraction(1),
    "min": Fraction(60),
}
# Rates use tc's bit units (decimal, like tc: 1kbit = 1000 bit/s).
RATE_UNITS: dict[str, Fraction] = {
    "bit": Fraction(1),
    "kbit": Fraction(10**3),
    "mbit": Fraction(10**6),
    "gbit": Fraction(10**9),
}
# tc reads "kbps"/"mbps" as kiloBYTES/megaBYTES per second, while most people
# mean bits; refusing them is kinder than guessing.
AMBIGUOUS_RATE_UNITS = {"bps", "kbps", "mbps", "gbps", "b/s", "kb/s", "mb/s",
                        "gb/s"}
# KB/MB/GB are decimal (SI), KiB/MiB/GiB binary, as on a disk label.
SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}

# The number in front of a unit, without its sign; testbed.spec.schema builds
# the editor schema's patterns from it, so both read numbers alike.
UNSIGNED_NUMBER = r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_NUMBER_UNIT = re.compile(rf"^\s*([-+]?{UNSIGNED_NUMBER})\s*([^\d\s].*?)?\s*$")


class UnitError(ValueError):
    """A value could not be read; ``fix`` says what to write instead."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}. Fix: {fix}")
        self.problem = problem
        self.fix = fix


def _split(value: object, what: str, example: str) -> tuple[Fraction, str]:
    """Number and lower-cased unit of ``value`` ('' when there is none)."""
    if isinstance(value, bool):
        raise UnitError(f"{value!r} is a boolean, not a {what}",
                        f"write a {what} such as {example}")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):  # .nan, .inf
            raise UnitError(f"{value!r} is not a finite number", f"write e.g. {example}")
        return Fraction(value), ""
    if not isinstance(value, str):
        raise UnitError(f"{value!r} is not a {what}",
                        f"write a {what} such as {example}")
    match = _NUMBER_UNIT.match(value)
    if not match:
        raise UnitError(f"{value!r} is not a {what}",
                        f"write a number and a unit, e.g. {example}")
    number, unit = match.groups()
    return Fraction(number), (unit or "").lower()


def parse_duration(value: object) -> float:
    """Seconds from ``20ms``, ``1.5s``, ``500us``; a bare number needs a unit
    unless it is 0, because ``delay: 20`` is too easy to misread."""
    number, unit = _split(value, "duration", "20ms")
    if unit == "":
        if number == 0:
            return 0.0
        raise UnitError(f"{value!r} has no unit",
                        f"write {value}ms or {value}s "
                        f"(units: {', '.join(DURATION_UNITS)})")
    if unit not in DURATION_UNITS:
        raise UnitError(f"unknown duration unit {unit!r} in {value!r}",
                        f"use one of {', '.join(DURATION_UNITS)}")
    return float(number * DURATION_UNITS[unit])


def parse_percent(value: object) -> float:
    """Fraction in [0, 1] from ``2%``; a bare number is read as percent too
    (``loss: 2`` is 2 %, as in tc netem). ``percent_note`` flags the bare
    numbers that look like fractions (``loss: 0.02``)."""
    number, unit = _split(value, "percentage", "2%")
    if unit not in ("", "%"):
        raise UnitError(f"unknown unit {unit!r} in {value!r}",
                        "write a percentage such as 2% or 0.5%")
    if number < 0 or number > 100:
        raise UnitError(f"{value!r} is outside 0%..100%",
                        "write a percentage between 0% and 100%")
    return float(number / 100)


def percent_note(value: object) -> tuple[str, str] | None:
    """(problem, fix) when ``value``, which ``parse_percent`` accepts, may not
    mean what its author meant, else None. A bare number in (0, 1] is percent
    here (``loss: 0.02`` is 0.02 %, as in tc netem) but looks like a fraction
    (2 %); callers report it as a warning, never as an error."""
    try:
        number, unit = _split(value, "percentage", "2%")
    except UnitError:
        return None
    if unit != "" or not 0 < number <= 1:
        return None
    text = str(value).strip()
    fraction, as_fraction = (_plain(decimal.Decimal(text.lstrip("+")).scaleb(shift))
                             for shift in (-2, 2))
    return (f"{text} has no '%', so it is read as {text}% (a fraction of "
            f"{fraction}), not as the fraction {text} (= {as_fraction}%)",
            f"write the unit: {text}% if that is meant, or {as_fraction}% "
            f"if {text} was a fraction")


def parse_rate(value: object) -> float | None:
    """Bit/s from ``10mbit``, ``1gbit``, ``200kbit``; None (unlimited) from
    null, ``none`` or ``unlimited``."""
    if value is None or (isinstance(value, str)
                         and value.strip().lower() in ("none", "unlimited")):
        return None
    number, unit = _split(value, "rate", "10mbit")
    unit = unit.removesuffix("/s") if unit.endswith("bit/s") else unit
    if unit == "":
        raise UnitError(f"{value!r} has no unit",
                        f"write {value}kbit, {value}mbit or {value}gbit")
    if unit in AMBIGUOUS_RATE_UNITS:
        raise UnitError(f"rate unit {unit!r} in {value!r} is ambiguous "
                        "(tc reads it as bytes per second)",
                        "write bits per second: kbit, mbit or gbit "
                        "(8mbit = 1 megabyte per second)")
    if unit not in RATE_UNITS:
        raise UnitError(f"unknown rate unit {unit!r} in {value!r}",
                        f"use one of {', '.join(RATE_UNITS)}")
    rate = number * RATE_UNITS[unit]
    if rate <= 0:
        raise UnitError(f"rate {value!r} is not positive",
                        "write a positive rate, or leave rate out for "
                        "an unlimited link")
    return float(rate)


def parse_size(value: object) -> int:
    """Bytes from ``200KB`` (x1000), ``256KiB`` (x1024), ``3MB``; a bare
    integer is bytes."""
    number, unit = _split(value, "size", "1200 or 200KB")
    if unit not in SIZE_UNITS and unit != "":
        raise UnitError(f"unknown size unit {unit!r} in {value!r}",
                        "use B, KB, MB, GB (x1000) or KiB, MiB, GiB (x1024)")
    size = number * SIZE_UNITS.get(unit, 1)
    if size.denominator != 1:
        raise UnitError(f"{value!r} is not a whole number of bytes",
                        "write a whole number of bytes, e.g. 1500 or 1.5KB")
    return int(size)


def _decimal_text(value: float, factor: Fraction) -> str:
    """Fewest significant digits d such that float(d * factor) == value: the
    number to write in front of a unit worth ``factor`` base units. 17
    digits always suffice for a double, so the loop ends."""
    exact = Fraction(value) / factor
    for digits in range(1, 18):
        ctx = decimal.Context(prec=digits)
        d = ctx.divide(decimal.Decimal(exact.numerator), decimal.Decimal(exact.denominator))
        if float(Fraction(d) * factor) == value:
            break
    d = d.normalize()
    if -6 <= d.adjusted() <= 15:
        return format(d, "f")
    return format(d, "e").replace("e+", "e")


def _plain(d: decimal.Decimal) -> str:
    """``Decimal('2.00')`` -> ``2``, ``Decimal('1E-7')`` -> ``0.0000001``."""
    d = d.normalize()
    return format(d, "f") if -12 <= d.adjusted() <= 15 else format(d, "e")


def _pick(candidates: list[str]) -> str:
    """Prefer no leading '0.' and no exponent ('500ms' over '0.5s'), then the
    shortest text ('1.5s' over '1500ms'); ties keep the larger unit."""
    return min(candidates, key=lambda text: (
        text.startswith("0.") or "e" in text.rstrip("s"), len(text)))


def format_duration(seconds: float) -> str:
    """Readable text among s/ms/us that parses back to exactly ``seconds``."""
    if seconds == 0:
        return "0s"
    return _pick([_decimal_text(seconds, DURATION_UNITS[unit]) + unit
                  for unit in ("s", "ms", "us")])


def format_percent(fraction: float) -> str:
    """``0.02`` -> ``2%`` (exact round trip through parse_percent)."""
    return _decimal_text(fraction, Fraction(1, 100)) + "%"


def format_rate(bps: float | None) -> str | None:
    """``10e6`` -> ``10mbit``; None stays None (unlimited)."""
    if bps is None:
        return None
    return _pick([_decimal_text(bps, RATE_UNITS[unit]) + unit
                  for unit in ("gbit", "mbit", "kbit", "bit")])


def format_size(size: int) -> int | str:
    """``200000`` -> ``200KB``, ``262144`` -> ``256KiB``, ``1200`` -> 1200."""
    for unit, factor in (("MB", 10**6), ("MiB", 2**20), ("KB", 10**3),
                         ("KiB", 2**10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return size
