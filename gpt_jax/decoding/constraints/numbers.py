"""JSON numbers between bounds, as regexes: the `minimum`, `maximum`, `exclusiveMinimum` and `exclusiveMaximum` of
a schema with type integer or number.

Integers are written as JSON writes them (no leading zeros, no "-0"); bounds that are not whole round inwards
(`maximum: 2.5` on an integer means 2). Numbers are an integer part and an optional fraction (`-12.5`, `3`, `0.25`;
no exponent), and their bounds are read as written (`0.1` is one tenth, not the float nearest it). Every string the
regex takes is inside the bounds, and every integer, and every decimal inside them, is taken (a negative zero
aside: `0` is taken, `-0` is not).
"""

from __future__ import annotations

import math
from fractions import Fraction

from gpt_jax.errors import ConstraintError, check

BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
MAX_DIGITS = 18  # a bound's digits before the point, and after it, at most
ANY_FRACTION = r"(?:\.[0-9]+)?"


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


def _fraction_digits(value: Fraction) -> str:
    """The digits after the point of a value with a finite decimal expansion, without trailing zeros."""
    rest, digits = value - math.floor(value), []
    while rest:
        rest *= 10
        digits.append(str(math.floor(rest)))
        rest -= math.floor(rest)
    return "".join(digits)


def _zero_fits(low: str, low_open: bool, high: str | None, high_open: bool) -> bool:
    """Is 0 (an empty digit run, or no fraction) between 0.low and 0.high (high None: no upper end)?"""
    return low == "" and not low_open and (high is None or high != "" or not high_open)


def _digit_run(low: str, low_open: bool, high: str | None, high_open: bool, may_end: bool = True) -> str | None:
    """The digit runs d (read as 0.d, an empty run as 0) between 0.low and 0.high (high None: no upper end below
    1), open or closed at each end; `may_end`: the empty run is one of them when its value (0) is. None: none."""
    if high is None and low == "":
        return ("[0-9]*" if may_end else "[0-9]+") if not low_open else "[0-9]*[1-9][0-9]*"
    if high == "" and low == "":
        return None if low_open or high_open else "0*" if may_end else "0+"
    parts = [""] if may_end and _zero_fits(low, low_open, high, high_open) else []
    first = int(low[0]) if low else 0
    last = 9 if high is None else int(high[0]) if high else 0
    middle = []
    for d in range(first, last + 1):
        rest_low = (low[1:], low_open) if d == first else ("", False)  # above low's digit: any rest
        rest_high = (None, False) if high is None or d < last else (high[1:], high_open)
        if rest_low == ("", False) and rest_high[0] is None:
            middle.append(d)  # any run follows
            continue
        run = _digit_run(*rest_low, *rest_high)
        if run is not None:
            parts.append(str(d) + run)
    if middle:
        parts.append(_digits(middle[0], middle[-1]) + "[0-9]*")
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"


def _fraction(low: str, low_open: bool, high: str | None, high_open: bool) -> str | None:
    """An integer part's optional fraction (`.` and digits, or none) between 0.low and 0.high, or None."""
    run = _digit_run(low, low_open, high, high_open, may_end=False)
    none_fits = _zero_fits(low, low_open, high, high_open)
    if run is None:
        return "" if none_fits else None
    return rf"(?:\.{run})?" if none_fits else rf"\.{run}"


def _magnitudes(lo: Fraction, lo_open: bool, hi: Fraction | None, hi_open: bool) -> str | None:
    """Decimal magnitudes I(.F)? between lo >= 0 and hi (finite decimals; open or closed; hi None: none), or None."""
    if hi is not None and (hi < lo or (hi == lo and (lo_open or hi_open))):
        return None
    whole_lo, digits_lo = math.floor(lo), _fraction_digits(lo)
    whole_hi, digits_hi = (None, None) if hi is None else (math.floor(hi), _fraction_digits(hi))
    if whole_hi == whole_lo:
        fraction = _fraction(digits_lo, lo_open, digits_hi, hi_open)
        return None if fraction is None else f"{whole_lo}{fraction}"
    parts = []
    fraction = _fraction(digits_lo, lo_open, None, False)  # lo's own integer part
    if fraction is not None:
        parts.append(f"{whole_lo}{fraction}")
    middle = natural_range(whole_lo + 1, None if hi is None else whole_hi - 1)  # every fraction
    if middle is not None:
        parts.append(middle + ANY_FRACTION)
    if hi is not None:
        fraction = _fraction("", False, digits_hi, hi_open)
        if fraction is not None:
            parts.append(f"{whole_hi}{fraction}")
    return None if not parts else "(?:" + "|".join(parts) + ")"


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
            values[key] = Fraction(repr(v)) if isinstance(v, float) else Fraction(v)  # 0.1 as written
            check(
                abs(values[key]) < 10**MAX_DIGITS and len(_fraction_digits(values[key])) <= MAX_DIGITS,
                ConstraintError,
                f"json_schema: {key} (at {path}) may have at most {MAX_DIGITS} digits before and after the point, "
                f"got {v!r}",
            )
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


def number_regex(lower, lower_open: bool, upper, upper_open: bool) -> str | None:
    """The JSON numbers (no exponent) between bounds with finite decimal expansions (ints or Fractions), open or
    closed (None: no end), or None."""
    negative = positive = None
    if upper is None or upper >= 0:  # 0 <= value
        lo, lo_open = (Fraction(0), False) if lower is None or lower < 0 else (Fraction(lower), lower_open)
        positive = _magnitudes(lo, lo_open, None if upper is None else Fraction(upper), upper_open)
    if lower is None or lower < 0:  # value < 0: its magnitude between -upper (or 0, open) and -lower
        lo, lo_open = (Fraction(0), True) if upper is None or upper >= 0 else (-Fraction(upper), upper_open)
        negative = _magnitudes(lo, lo_open, None if lower is None else -Fraction(lower), lower_open)
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
        regex = number_regex(lower, lower_open, upper, upper_open)
    check(regex is not None, ConstraintError, f"json_schema: no {kind} lies within the bounds at {path}")
    return regex
