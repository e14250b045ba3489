"""Bounded JSON integers and numbers as regexes: every integer (and decimal) in a window is taken exactly when it
lies within the bounds, for random open and closed bounds, whole or decimal; nothing JSON would not write is
taken."""

from __future__ import annotations

import random
import re
from fractions import Fraction

import pytest

from gpt_jax.decoding.constraints.numbers import bounded_regex, integer_regex, number_regex
from gpt_jax.errors import ConstraintError


def within(x, lo, lo_open, hi, hi_open) -> bool:
    return (lo is None or (x > lo if lo_open else x >= lo)) and (hi is None or (x < hi if hi_open else x <= hi))


def test_integers_between_random_bounds():
    rng = random.Random(0)
    window = range(-1300, 1301)
    for _ in range(300):
        lo, hi = (rng.choice([None, rng.randint(-1200, 1200)]) for _ in range(2))
        regex = integer_regex(lo, hi)
        if regex is None:
            assert not any(within(v, lo, False, hi, False) for v in window)
            continue
        taken = re.compile(regex)
        assert [v for v in window if taken.fullmatch(str(v))] == [v for v in window if within(v, lo, False, hi, False)]
        assert not any(taken.fullmatch(s) for s in ("-0", "00", "01", "-01", "", "-", "1.0", "1e3"))


@pytest.mark.parametrize("scale", [1, 10, 100])
def test_decimals_between_random_bounds(scale):
    """Bounds with 0, 1 or 2 digits after the point against decimals with up to 3."""
    rng = random.Random(scale)
    fractions = ("", ".0", ".00", ".5", ".05", ".10", ".25", ".255", ".3", ".75", ".999", ".001", ".1", ".12")
    texts = [sign + str(i) + f for sign in ("", "-") for i in range(14) for f in fractions]
    for _ in range(400):
        lo, hi = (rng.choice([None, Fraction(rng.randint(-14 * scale, 14 * scale), scale)]) for _ in range(2))
        lo_open, hi_open = rng.random() < 0.5, rng.random() < 0.5
        regex = number_regex(lo, lo_open, hi, hi_open)
        inside = {t for t in texts if within(Fraction(t), lo, lo_open, hi, hi_open)}
        expected = {t for t in inside if not (t.startswith("-") and Fraction(t) == 0)}  # -0 is not written
        if regex is None:
            assert expected == set(), (lo, lo_open, hi, hi_open)
            continue
        taken = {t for t in texts if re.fullmatch(regex, t)}
        assert taken == expected, (lo, lo_open, hi, hi_open, regex)


def test_schema_bounds_tightest_wins_and_integers_round_inwards():
    taken = bounded_regex({"type": "integer", "minimum": 2.5, "exclusiveMinimum": 2, "maximum": 9.9,
                           "exclusiveMaximum": 9}, "#")  # fmt: skip
    assert [v for v in range(-5, 20) if re.fullmatch(taken, str(v))] == list(range(3, 9))
    assert bounded_regex({"type": "integer"}, "#") is None
    with pytest.raises(ConstraintError, match="must be a finite number"):
        bounded_regex({"type": "integer", "minimum": "3"}, "#/properties/a")
    tenth = bounded_regex({"type": "number", "minimum": 0.1, "exclusiveMaximum": 1.5}, "#")  # 0.1 as written
    assert [t for t in ("0.1", "0.10", "0.0999", "1.49", "1.5", "1") if re.fullmatch(tenth, t)] == [
        "0.1", "0.10", "1.49", "1"]  # fmt: skip
    with pytest.raises(ConstraintError, match="at most 18 digits"):
        bounded_regex({"type": "number", "maximum": 1e30}, "#")
    with pytest.raises(ConstraintError, match="both bounds and enum"):
        bounded_regex({"type": "integer", "minimum": 3, "enum": [4]}, "#")
