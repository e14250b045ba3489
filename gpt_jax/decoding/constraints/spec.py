r"""What a call may constrain its output to, checked and turned into one regex over the generated text's bytes.

    regex="..."          the whole generated text matches it (full match; the regex-automata dialect, as Python's
                         `re` for the common syntax: classes, groups, alternation, bounded and unbounded repeats;
                         \d \w \s and their negations are ASCII, as `re.ASCII` reads them)
    choice=["a", "b"]    exactly one of the strings
    json_schema=...      a JSON value valid under the schema (a dict, a JSON string, or a pydantic model class)
    json_object=True     any JSON object, nested at most JSON_DEPTH deep

Each may be one value for every row, or a list with one value per prompt (`None`: that row is free). JSON is written
compactly: no whitespace between tokens (`{"a":1,"b":[2,3]}`), for every schema and for `json_object`. The
schema-to-regex step is outlines-core's; a keyword it would not honour is refused by name (`SCHEMA_KEYWORDS` are the
ones kept), never ignored.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from gpt_jax.decoding.constraints.numbers import BOUNDS, bounded_regex
from gpt_jax.errors import ConstraintError, check

JSON_DEPTH = 3  # json_object and recursive $ref: objects and arrays nested at most this deep
MAX_CHOICES = 1024
# keywords whose meaning the generated regex keeps (checked by the tests with jsonschema), and annotations
SCHEMA_KEYWORDS = {
    "type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "enum", "const",
    "anyOf", "$ref", "$defs", "definitions", "minLength", "maxLength", "pattern", "format", *BOUNDS,
    "title", "description", "default", "examples", "$schema", "$id",
}  # fmt: skip
FORMATS = {  # format -> the string pattern it stands for (dates: days 01-28 in February, so every one is a date)
    "date": r"\d{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\d|30)"
    r"|02-(?:0[1-9]|1\d|2[0-8]))",
    "uuid": None,  # outlines-core's own
    "email": None,
}
NESTED = ("properties", "$defs", "definitions")  # keywords whose value maps names to schemas


@dataclasses.dataclass(frozen=True)
class Constraint:
    """One row's constraint: `kind` ("regex", "choice", "json_schema", "json_object") and the regex it means."""

    kind: str
    regex: str


def _regex(value) -> Constraint:
    check(isinstance(value, str) and value != "", ConstraintError, f"regex must be a non-empty string, got {value!r}")
    try:
        re.compile(value)
    except re.error as e:
        raise ConstraintError(f"regex {value!r} is not a regular expression: {e}") from None
    return Constraint("regex", ascii_classes(value))


def _choice(value) -> Constraint:
    ok = isinstance(value, (list, tuple)) and 0 < len(value) <= MAX_CHOICES
    ok = ok and all(isinstance(c, str) and c != "" for c in value)
    check(ok, ConstraintError, f"choice must be a list of 1 to {MAX_CHOICES} non-empty strings, got {value!r:.80}")
    return Constraint("choice", "(?:" + "|".join(re.escape(c) for c in value) + ")")


def schema_dict(value) -> dict:
    """A dict, a JSON string or a pydantic model class -> the schema as a dict."""
    if isinstance(value, type) and hasattr(value, "model_json_schema"):
        value = value.model_json_schema()
    elif isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ConstraintError(f"json_schema is not valid JSON: {e}") from None
    check(
        isinstance(value, dict),
        ConstraintError,
        f"json_schema must be a dict, a JSON string or a pydantic model class, got {type(value).__name__}",
    )
    return value


PLACEHOLDER = 8_000_000_000_000_000_000  # bounded numbers stand in the schema as consts from here up


def check_schema(schema, path: str = "#", numbers: dict[str, str] | None = None) -> dict:
    """The schema with every keyword checked (refused by name if not kept) and formats made patterns. A bounded
    integer or number becomes a const placeholder; `numbers` maps the placeholder's text to its regex."""
    numbers = {} if numbers is None else numbers
    if isinstance(schema, bool):
        check(schema, ConstraintError, f"json_schema: the schema at {path} is false: nothing is allowed")
        return {}
    check(isinstance(schema, dict), ConstraintError, f"json_schema: {path} must be an object, got {schema!r:.60}")
    out = {}
    for key, value in schema.items():
        check(
            key in SCHEMA_KEYWORDS,
            ConstraintError,
            f"json_schema keyword {key!r} (at {path}) is not supported; supported: "
            + ", ".join(sorted(SCHEMA_KEYWORDS)),
        )
        if key in NESTED:
            check(isinstance(value, dict), ConstraintError, f"json_schema: {path}/{key} must be an object")
            value = {name: check_schema(sub, f"{path}/{key}/{name}", numbers) for name, sub in value.items()}
        elif key == "items":
            value = check_schema(value, f"{path}/items", numbers)
        elif key == "anyOf":
            check(isinstance(value, list) and value, ConstraintError, f"json_schema: {path}/anyOf must be a list")
            value = [check_schema(sub, f"{path}/anyOf/{i}", numbers) for i, sub in enumerate(value)]
        elif key == "additionalProperties":
            check(
                isinstance(value, bool),
                ConstraintError,
                f"json_schema: additionalProperties (at {path}) must be true or false here (a schema is not supported)",
            )
        elif key == "format":
            check(
                value in FORMATS,
                ConstraintError,
                f"json_schema format {value!r} (at {path}) is not supported; supported: {', '.join(FORMATS)}",
            )
        out[key] = value
    if FORMATS.get(out.get("format")):
        check("pattern" not in out, ConstraintError, f"json_schema: {path} has both format and pattern")
        out["pattern"] = FORMATS[out.pop("format")]
    bounded = bounded_regex(out, path)
    if bounded is not None:
        placeholder = PLACEHOLDER + len(numbers)
        numbers[str(placeholder)] = bounded
        return {"const": placeholder}
    return out


def library():
    """outlines-core (the `structured` extra), or a ConstraintError saying how to install it."""
    try:
        import outlines_core
    except ImportError:
        raise ConstraintError(
            "constrained output needs outlines-core: pip install 'gpt-jax[structured]'"
        ) from None
    return outlines_core


def _json_schema(value) -> Constraint:
    build_regex_from_schema = library().json_schema.build_regex_from_schema
    schema = schema_dict(value)
    try:
        text = json.dumps(schema)
    except (TypeError, ValueError) as e:
        raise ConstraintError(f"json_schema must hold JSON values only: {e}") from None
    check(
        str(PLACEHOLDER)[:16] not in text,
        ConstraintError,
        f"json_schema may not hold the digits {str(PLACEHOLDER)[:16]!r} (they mark bounded numbers)",
    )
    numbers: dict[str, str] = {}
    schema = check_schema(schema, numbers=numbers)
    try:
        regex = build_regex_from_schema(json.dumps(schema), whitespace_pattern="", max_recursion_depth=JSON_DEPTH)
    except (ValueError, TypeError) as e:
        raise ConstraintError(f"json_schema cannot be compiled: {e}") from None
    for placeholder, number in numbers.items():
        regex = regex.replace(placeholder, number)
    return Constraint("json_schema", ascii_classes(regex))


def _json_object(value) -> Constraint:
    check(value is True, ConstraintError, f"json_object must be True or None, got {value!r}")
    return dataclasses.replace(_json_schema({"type": "object"}), kind="json_object")


ASCII_CLASSES = {"d": "[0-9]", "w": "[0-9A-Za-z_]", "s": "[ \\t\\n\\r\\f\\v]",
                 "D": "[^0-9]", "W": "[^0-9A-Za-z_]", "S": "[^ \\t\\n\\r\\f\\v]"}  # fmt: skip


def ascii_classes(regex: str) -> str:
    """`regex` with \\d \\w \\s (and negations) spelled as ASCII classes, which the library's dialect nests inside
    a class too (its \\d alone is any Unicode digit)."""
    out, i = [], 0
    while i < len(regex):
        if regex[i] == "\\" and i + 1 < len(regex):
            out.append(ASCII_CLASSES.get(regex[i + 1], regex[i : i + 2]))
            i += 2
        else:
            out.append(regex[i])
            i += 1
    return "".join(out)


PARSERS = {"regex": _regex, "choice": _choice, "json_schema": _json_schema, "json_object": _json_object}


def is_per_row(kind: str, value) -> bool:
    """Is `value` one constraint per prompt (a list; for choice, a list of lists or None) rather than one for all?"""
    if not isinstance(value, list):
        return False
    return kind != "choice" or all(isinstance(v, (list, tuple, type(None))) for v in value)


def row_constraints(rows: int, **given: Any) -> list[Constraint | None] | None:
    """The constraint of each of `rows` prompts from the call's regex/choice/json_schema/json_object values (each a
    single value or a list of one per prompt); None when the call constrains nothing. At most one kind per row."""
    given = {kind: value for kind, value in given.items() if value is not None}
    if not given:
        return None
    out: list[Constraint | None] = [None] * rows
    for kind, value in given.items():
        values = value if is_per_row(kind, value) else [value] * rows
        check(
            len(values) == rows,
            ConstraintError,
            f"{kind} must be one value or a list of {rows} values (one per prompt), got {len(values)}",
        )
        for r, v in enumerate(values):
            if v is None or (kind == "json_object" and v is False):
                continue
            check(out[r] is None, ConstraintError, f"prompt {r} has more than one of {', '.join(given)}: give one")
            out[r] = PARSERS[kind](v)
    return out if any(c is not None for c in out) else None
