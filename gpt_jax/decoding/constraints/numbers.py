"""JSON numbers between bounds, as regexes: the `minimum`, `maximum`, `exclusiveMinimum` and `exclusiveMaximum` of
a schema with type integer or number.

Integers are written as JSON writes them (no leading zeros, no "-0"). Numbers are an integer part and an optional
fraction (`-12.5`, `3`, `0.25`; no exponent), and their bounds must be whole numbers (`maximum: 2.5` on a number is
refused; on an integer it means `maximum: 2`). Every string the regex takes is inside the bounds, and every
integer (and every fraction of a bounded number) inside them is taken.
"""

from __future__ import annotations

import math
from fractions import Fraction

from gpt_jax.errors import ConstraintError, check

BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
ANY_FRACTION, ZERO_FRACTION, NONZERO_FRACTION = r"(?:\.[0-9]+)?", r"(?:\.0+)?", r"\.[0-9]*[1-9][0-9]*"


def _digits(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"[{lo}-{hi}]"


def _same_length(lo: str, hi: str) -> str:
    """The digit strings of one length from lo to hi (lo <= hi, leading zeros kept as they come)."""
    if lo == hi:
        return lo
    common = 0
    while lo[common] == hi[common]:
        common += 1
    prefix, lo, hi = lo[:common], lo[common:], hi[common:]
    tail = len(lo) - 1
    parts, first, last = [], int(lo[0]), int(hi[0])
    if lo[1:] != "0" * tail:  # lo's first digit with a tail from lo's own up
        parts.append(lo[0] + _same_length(lo[1:], "9" * tail))
        first += 1
    upper = None
    if hi[1:] != "9" * tail:
        upper = hi[0] + _same_length("0" * tail, hi[1:])
        last -= 1
    if first <= last:
        parts.append(_digits(first, last) + ("[0-9]" + (f"{{{tail}}}" if tail > 1 else "") if tail else ""))
    if upper is not None:
        parts.append(upper)
    return prefix + (parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")")


def natural_range(lo: int, hi: int | None) -> str | None:
    """The regex of the integers lo..hi written without leading zeros (0 <= lo; hi None: no upper end); None when
    there are none."""
    if hi is not None and hi < lo:
        return None
    parts, width = [], len(str(lo))
    top = hi if hi is not None else 10**width - 1
    for n in range(width, len(str(top)) + 1):
        a, b = max(lo, 10 ** (n - 1) if n > 1 else 0), min(top, 10**n - 1)
        parts.append(_same_length(str(a), str(b)))
    if hi is None:
        parts.append(f"[1-9][0-9]{{{width},}}")
    return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"


def _magnitudes(lo: int, lo_open: bool, hi: int | None, hi_open: bool) -> str | None:
    """Decimal magnitudes I(.F)? between whole lo and hi (open or closed ends; hi None: none), or None."""
    if hi is not None and (hi < lo or (hi == lo and (lo_open or hi_open))):
        return None
    if hi == lo:
        return str(lo) + ZERO_FRACTION
    parts = [str(lo) + (NONZERO_FRACTION if lo_open else ANY_FRACTION)]  # lo <= value < lo + 1
    middle = natural_range(lo + 1, None if hi is None else hi - 1)  # every fraction
    if middle is not None:
        parts.append(middle + ANY_FRACTION)
    if hi is not None and not hi_open:
        parts.append(str(hi) + ZERO_FRACTION)
    return "(?:" + "|".join(parts) + ")"


def _either(*parts: str | None) -> str | None:
    parts = [p for p in parts if p is not None]
    return None if not parts else parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"


def _bounds(schema: dict, path: str) -> tuple[Fraction | None, bool, Fraction | None, bool]:
    """(lower, lower is open, upper, upper is open) from the schema's bound keywords (the tighter where both)."""
    values = {}
    for key in BOUNDS:
        if key in schema:
            v = schema[key]
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            check(ok, ConstraintError, f"json_schema: {key} (at {path}) must be a finite number, got {v!r}")
            values[key] = Fraction(v)
    lower = upper = None
    lower_open = upper_open = False
    for key, is_open in (("minimum", False), ("exclusiveMinimum", True)):
        if key in values and (lower is None or values[key] > lower or (values[key] == lower and is_open)):
            lower, lower_open = values[key], is_open
    for key, is_open in (("maximum", False), ("exclusiveMaximum", True)):
        if key in values and (upper is None or values[key] < upper or (values[key] == upper and is_open)):
            upper, upper_open = values[key], is_open
    return lower, lower_open, upper, upper_open


def integer_regex(lower: int | None, upper: int | None) -> str | None:
    """The JSON integers lower..upper (inclusive; None: no end), or None when there are none."""
    if lower is not None and upper is not None and upper < lower:
        return None
    negative = None if lower is not None and lower >= 0 else natural_range(max(1, -upper if upper is not None else 1),
                                                                          None if lower is None else -lower)  # fmt: skip
    positive = None if upper is not None and upper < 0 else natural_range(max(0, lower or 0), upper)
    return _either(None if negative is None else "-" + negative, positive)


def number_regex(lower: int | None, lower_open: bool, upper: int | None, upper_open: bool) -> str | None:
    """The JSON numbers (no exponent) between whole bounds, open or closed (None: no end), or None."""
    negative = positive = None
    if upper is None or upper >= 0:  # 0 <= value
        lo, lo_open = (0, False) if lower is None or lower < 0 else (lower, lower_open)
        positive = _magnitudes(lo, lo_open, upper, upper_open)
    if lower is None or lower < 0:  # value < 0: its magnitude between -upper (or 0, open) and -lower
        lo, lo_open = (0, True) if upper is None or upper >= 0 else (-upper, upper_open)
        negative = _magnitudes(lo, lo_open, None if lower is None else -lower, lower_open)
    return _either(None if negative is None else "-" + negative, positive)


def bounded_regex(schema: dict, path: str) -> str | None:
    """The regex of the schema's bounded integer or number, or None when it has no bounds."""
    if not any(key in schema for key in BOUNDS):
        return None
    kind = schema.get("type")
    check(
        kind in ("integer", "number"),
        ConstraintError,
        f"json_schema: bounds (at {path}) need type integer or number, got type {kind!r}",
    )
    for other in ("enum", "const"):
        check(other not in schema, ConstraintError, f"json_schema: {path} has both bounds and {other}: give one")
    lower, lower_open, upper, upper_open = _bounds(schema, path)
    if kind == "integer":
        lo = None if lower is None else math.floor(lower) + 1 if lower_open else math.ceil(lower)
        hi = None if upper is None else math.ceil(upper) - 1 if upper_open else math.floor(upper)
        regex = integer_regex(lo, hi)
    else:
        for v in (lower, upper):
            check(
                v is None or v.denominator == 1,
                ConstraintError,
                f"json_schema: the bounds of a number (at {path}) must be whole numbers, got {float(v)}",
            )
        regex = number_regex(
            None if lower is None else int(lower), lower_open, None if upper is None else int(upper), upper_open
        )
    check(regex is not None, ConstraintError, f"json_schema: no {kind} lies within the bounds at {path}")
    return regex
