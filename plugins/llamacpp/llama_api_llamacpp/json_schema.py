"""JSON schemas to GBNF: llama-cpp-python's converter, made exact for what we accept.

The converter ignores several keywords (integer bounds among them) and lets raw control
characters into strings, so its grammar could emit JSON that does not validate. Here a
schema is first checked and rewritten (keywords we can't enforce are a 400), integers with
bounds become exact range grammars built digit by digit, and the string rules are fixed.
Every size a schema can ask for is checked against `grammar_limits` on the way, before
the converter builds anything.
"""

from __future__ import annotations

import copy
import json
import math
import re

from llama_api import errors
from llama_api_llamacpp import grammar_limits
from llama_api_llamacpp.grammar_limits import (
    MAX_ALTERNATIVES,
    MAX_INTEGER_BOUND,
    MAX_PATTERN,
    MAX_PROPERTIES,
    MAX_REPEAT,
    MAX_SCHEMA_DEPTH,
    MAX_SCHEMA_PARTS,
)

# Keywords that don't constrain a value.
ANNOTATIONS = {"title", "description", "default", "examples", "$comment", "$schema", "$id",
               "deprecated", "readOnly", "writeOnly", "$defs", "definitions"}
# What each kind of schema may say besides annotations.
KEYWORDS = {
    "object": {"type", "properties", "required", "additionalProperties"},
    "array": {"type", "items", "prefixItems", "minItems", "maxItems"},
    "string": {"type", "minLength", "maxLength", "pattern", "format"},
    "integer": {"type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "number": {"type"},
    "boolean": {"type"},
    "null": {"type"},
}
FORMATS = {"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"}
# Unbounded integers get at most this many digits (as the converter's own rule).
MAX_DIGITS = 16
MARKER = "llama-api-integer-range-{}"
# Inside a JSON string: anything but '"', '\' and control characters, or an escape.
STRING_CHAR = (r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] '
               r'[0-9a-fA-F] [0-9a-fA-F])')
# What a pattern's "." (and the converter's `dot` rule) may emit inside a JSON string.
PATTERN_DOT = r'[^"\\\x7F\x00-\x1F]'


def schema_to_gbnf(schema: dict, what: str) -> str:
    """A grammar whose every output validates against `schema`; BadRequest (naming `what`)
    for a schema this backend can't enforce exactly."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    grammar_limits.install()
    ranges: list[tuple[int | None, int | None]] = []
    try:
        prepared = _Preparer(what, ranges).visit(copy.deepcopy(schema), "")
    except (TypeError, ValueError, AttributeError, KeyError) as exc:  # a keyword's value of
        raise errors.BadRequest(f"malformed JSON schema for {what}: {exc}",  # a wrong type
                                param=what) from exc
    try:
        gbnf = json_schema_to_gbnf(json.dumps(prepared))
    except Exception as exc:  # the converter asserts on what it doesn't know
        raise errors.BadRequest(f"unsupported JSON schema for {what}: {exc}",
                                param=what) from exc
    rules = []
    for i, (low, high) in enumerate(ranges):
        literal = '"\\"' + MARKER.format(i) + '\\""'
        gbnf = gbnf.replace(literal, f"integer-range-{i}")
        rules.append(f"integer-range-{i} ::= {integer_range(low, high)}")
    gbnf = re.sub(r"(?m)^char ::= .*$", lambda _: f"char ::= {STRING_CHAR}", gbnf)
    gbnf = re.sub(r"(?m)^dot ::= .*$", lambda _: f"dot ::= {PATTERN_DOT}", gbnf)
    return "\n".join([gbnf, *rules])


class _Preparer:
    def __init__(self, what: str, ranges: list):
        self.what = what
        self.ranges = ranges
        self.depth = 0  # schemas inside schemas, here
        self.parts = 0  # schemas and enum values seen so far

    def fail(self, path: str, message: str) -> errors.BadRequest:
        where = f" at {path}" if path else ""
        return errors.BadRequest(f"unsupported JSON schema for {self.what}{where}: {message}",
                                 param=self.what)

    def limit(self, path: str, keyword: str, value, limit) -> None:
        """A 400 naming the keyword, its value and the limit, for a value past it."""
        if value is not None and not isinstance(value, bool) and \
                isinstance(value, (int, float)) and not abs(value) <= limit:
            raise grammar_limits.too_large(self.what, f" at {path}" if path else "", keyword,
                                           value, limit)

    def count(self, path: str, n: int) -> None:
        self.parts += n
        self.limit(path, "the schema's size (schemas and enum values)", self.parts,
                   MAX_SCHEMA_PARTS)

    def visit(self, schema, path: str):
        self.count(path, 1)
        self.depth += 1
        try:
            self.limit(path, "the nesting of schemas", self.depth, MAX_SCHEMA_DEPTH)
            return self._visit(schema, path)
        finally:
            self.depth -= 1

    def _visit(self, schema, path: str):
        if schema is True:
            return {}
        if not isinstance(schema, dict):
            raise self.fail(path, f"expected a schema object, got {schema!r}")
        for key in ("$defs", "definitions"):
            if isinstance(schema.get(key), dict):
                schema[key] = {name: self.visit(sub, f"{path}/{key}/{name}")
                               for name, sub in schema[key].items()}
        own = {k: v for k, v in schema.items() if k not in ANNOTATIONS}
        keep = {k: v for k, v in schema.items() if k in ("$defs", "definitions")}
        if "allOf" in own:  # one part only (pydantic wraps a $ref so)
            parts = own.pop("allOf")
            if not isinstance(parts, list) or len(parts) != 1 or not isinstance(parts[0], dict):
                raise self.fail(path, "allOf is supported with one schema only")
            overlap = set(own) & set(parts[0])
            if overlap:
                raise self.fail(path, f"allOf together with {sorted(overlap)}")
            return {**keep, **self.visit({**own, **parts[0]}, path)}
        if "$ref" in own:
            self._only(own, {"$ref"}, path, "$ref")
            return {**keep, "$ref": own["$ref"]}
        for key in ("anyOf", "oneOf"):
            if key in own:
                self._only(own, {key}, path, key)
                options = own[key]
                if not isinstance(options, list) or not options:
                    raise self.fail(path, f"{key} needs a list of schemas")
                self.limit(path, f"the number of {key} schemas", len(options),
                           MAX_ALTERNATIVES)
                if key == "oneOf" and not _exclusive(options):
                    raise self.fail(path, "oneOf is supported only for alternatives of "
                                          "different types (use anyOf)")
                return {**keep, "anyOf": [self.visit(o, f"{path}/{key}/{i}")
                                          for i, o in enumerate(options)]}
        if "const" in own or "enum" in own:
            return {**keep, **self._constants(own, path)}
        kind = own.get("type")
        if isinstance(kind, list):  # each type with the keywords that apply to it
            for t in kind:
                if t not in KEYWORDS:
                    raise self.fail(path, f"unknown type {t!r}")
            known = set().union(*(KEYWORDS[t] for t in kind))
            self._only(own, known, path, f"types {kind}")
            return {**keep, "anyOf": [
                self.visit({k: v for k, v in own.items() if k in KEYWORDS[t]} | {"type": t},
                           f"{path}/type/{t}")
                for t in kind]}
        if kind is None:
            if own:
                raise self.fail(path, f"a schema with {sorted(own)} needs a type")
            return {**keep}
        if kind not in KEYWORDS:
            raise self.fail(path, f"unknown type {kind!r}")
        self._only(own, KEYWORDS[kind], path, f"type {kind}")
        visit = getattr(self, f"_{kind}", None)
        return {**keep, **(visit(own, path) if visit else own)}

    def _only(self, schema: dict, allowed: set, path: str, what: str) -> None:
        extra = sorted(set(schema) - allowed)
        if extra:
            raise self.fail(path, f"{', '.join(extra)} can't be enforced with {what}")

    def _constants(self, schema: dict, path: str) -> dict:
        self._only(schema, {"const", "enum", "type"}, path, "const/enum")
        values = [schema["const"]] if "const" in schema else schema["enum"]
        if not isinstance(values, list) or not values:
            raise self.fail(path, "enum needs a list of values")
        self.limit(path, "the number of enum values", len(values), MAX_ALTERNATIVES)
        self.count(path, len(values))
        kinds = schema.get("type")
        if "const" in schema and "enum" in schema:
            values = [v for v in values if v in schema["enum"]]
        if kinds is not None:
            kinds = kinds if isinstance(kinds, list) else [kinds]
            values = [v for v in values if any(_is_type(v, k) for k in kinds)]
        if not values:
            raise self.fail(path, "no value satisfies both enum/const and type")
        return {"enum": values}

    def _object(self, schema: dict, path: str) -> dict:
        properties = schema.get("properties") or {}
        if not isinstance(properties, dict):
            raise self.fail(path, "properties must be an object")
        self.limit(path, "the number of properties", len(properties), MAX_PROPERTIES)
        missing = [name for name in schema.get("required") or [] if name not in properties]
        if missing:
            raise self.fail(path, f"required {missing} have no schema in properties")
        out = {**schema, "properties": {
            name: self.visit(sub, f"{path}/properties/{name}")
            for name, sub in properties.items()}}
        extra = schema.get("additionalProperties")
        if extra is True and properties:
            del out["additionalProperties"]  # named properties only: still valid
        elif isinstance(extra, dict):
            if properties:
                raise self.fail(path, "additionalProperties with a schema together with "
                                      "properties")
            out["additionalProperties"] = self.visit(extra, f"{path}/additionalProperties")
        if not properties and "additionalProperties" not in out:
            out.pop("properties")
        return out

    def _array(self, schema: dict, path: str) -> dict:
        items = schema.get("items")
        if "prefixItems" in schema or isinstance(items, list):
            if "prefixItems" in schema and items not in (None, False):
                raise self.fail(path, "prefixItems together with items")
            if "minItems" in schema or "maxItems" in schema:
                raise self.fail(path, "minItems/maxItems with a tuple (prefixItems)")
            tuple_items = schema.get("prefixItems", items)
            self.limit(path, "the number of prefixItems", len(tuple_items), MAX_REPEAT)
            return {"type": "array", "items": [self.visit(s, f"{path}/prefixItems/{i}")
                                                for i, s in enumerate(tuple_items)]}
        if items is False:
            if schema.get("minItems"):
                raise self.fail(path, "no items allowed but minItems > 0")
            return {"type": "array", "items": []}
        out = {**schema, "items": self.visit(items if items is not None else {},
                                             f"{path}/items")}
        self._repetition_bounds(out, path, "minItems", "maxItems")
        return out

    def _string(self, schema: dict, path: str) -> dict:
        if "pattern" in schema:
            if set(schema) & {"minLength", "maxLength", "format"}:
                raise self.fail(path, "pattern together with minLength/maxLength/format")
            pattern = schema["pattern"]
            if isinstance(pattern, str):
                self.limit(path, "the length of pattern", len(pattern), MAX_PATTERN)
            problem = _pattern_problem(pattern)
            if problem:
                raise self.fail(path, f"pattern {pattern!r}: {problem}")
            return {"type": "string", "pattern": _anchored(pattern)}
        fmt = schema.get("format")
        if fmt is not None:
            if not isinstance(fmt, str) or fmt not in FORMATS:
                raise self.fail(path, f"string format {fmt!r} (supported: "
                                      f"{', '.join(sorted(FORMATS))})")
            if set(schema) & {"minLength", "maxLength"}:
                raise self.fail(path, "format together with minLength/maxLength")
        self._repetition_bounds(schema, path, "minLength", "maxLength")
        return schema

    def _repetition_bounds(self, schema: dict, path: str, low_key: str, high_key: str) -> None:
        """A repetition's bounds (minItems/maxItems, minLength/maxLength): integers,
        0 <= min <= max, each within MAX_REPEAT."""
        low, high = schema.get(low_key, 0), schema.get(high_key)
        if not isinstance(low, int) or (high is not None and not isinstance(high, int)) \
                or (high is not None and high < low) or low < 0:
            raise self.fail(path, f"{low_key}/{high_key} must be integers, 0 <= min <= max")
        self.limit(path, low_key, low, MAX_REPEAT)
        self.limit(path, high_key, high, MAX_REPEAT)

    def _integer(self, schema: dict, path: str) -> dict:
        for keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            self.limit(path, keyword, schema.get(keyword), MAX_INTEGER_BOUND)
        low = _bound(schema, "minimum", "exclusiveMinimum", math.ceil, +1)
        high = _bound(schema, "maximum", "exclusiveMaximum", math.floor, -1)
        if low is None and high is None:
            return {"type": "integer"}
        if low is not None and high is not None and low > high:
            raise self.fail(path, f"no integer lies between the bounds {schema}")
        self.ranges.append((low, high))
        return {"const": MARKER.format(len(self.ranges) - 1)}


def _bound(schema: dict, inclusive: str, exclusive: str, rounding, step: int) -> int | None:
    """The tightest integer bound that `inclusive` and `exclusive` give (either draft)."""
    bounds = []
    value = schema.get(inclusive)
    flag = schema.get(exclusive)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if flag is True:  # draft 4: exclusiveMinimum: true applies to minimum
            bounds.append(_exclusive_bound(value, rounding, step))
        else:
            bounds.append(int(rounding(value)))
    if isinstance(flag, (int, float)) and not isinstance(flag, bool):
        bounds.append(_exclusive_bound(flag, rounding, step))
    if not bounds:
        return None
    return max(bounds) if step > 0 else min(bounds)


def _exclusive_bound(value, rounding, step) -> int:
    nearest = int(rounding(value))
    return nearest + step if nearest == value else nearest


def _is_type(value, kind: str) -> bool:
    return {
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "null": value is None,
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
    }.get(kind, False)


def _exclusive(options: list) -> bool:
    """True when at most one alternative can match any value: each has its own type."""
    kinds = [o.get("type") if isinstance(o, dict) else None for o in options]
    if not all(isinstance(k, str) for k in kinds) or len(set(kinds)) != len(kinds):
        return False
    return not ({"integer", "number"} <= set(kinds))


# Pattern syntax whose grammar could put '"', a backslash or a control character in a
# string unescaped (\d, \s, \\, [^...]), or that the converter would read as text.
_UNSAFE_PATTERN = re.compile(r'\\[^.\-\[\](){}|*+?^$/]|\[\^|["\x00-\x1f\x7f]')


def _pattern_problem(pattern) -> str | None:
    if not isinstance(pattern, str):
        return "not a string"
    bad = _UNSAFE_PATTERN.search(pattern)
    if bad:
        return (f"{bad.group(0)!r} is not supported (literal characters, [a-z] classes, "
                "groups, |, ., and * + ? {m,n} are)")
    return None


def _anchored(pattern: str) -> str:
    """JSON Schema patterns match anywhere; the converter wants ^...$."""
    start = "" if pattern.startswith("^") else ".*"
    end = "" if pattern.endswith("$") and not pattern.endswith("\\$") else ".*"
    core = pattern[1 if not start else 0: -1 if not end else None]
    return f"^{start}({core}){end}$"


# -- integer ranges ----------------------------------------------------------------------

def integer_range(low: int | None, high: int | None) -> str:
    """GBNF matching exactly the JSON integers n with low <= n <= high (None: unbounded,
    up to MAX_DIGITS digits), without leading zeros or "-0"."""
    if low is not None and high is not None and low > high:
        raise ValueError(f"empty range {low}..{high}")
    alternatives = []
    if low is None or low < 0:  # negatives: "-" and a magnitude in [max(1, -high), -low]
        magnitudes = _naturals(1 if high is None or high >= 0 else -high,
                               None if low is None else -low)
        alternatives.append('"-" ' + _group(magnitudes))
    if high is None or high >= 0:
        alternatives.extend(_naturals(max(low or 0, 0), high))
    return _group(alternatives)


def _naturals(low: int, high: int | None) -> list[str]:
    """Alternatives for the decimals of low..high (high None: any up to MAX_DIGITS)."""
    out = []
    if low == 0:
        out.append('"0"')
        low = 1
    if high is not None and low > high:
        return out
    last = len(str(high)) if high is not None else max(MAX_DIGITS, len(str(low)))
    for length in range(len(str(low)), last + 1):
        first, top = max(low, 10 ** (length - 1)), 10 ** length - 1
        if high is None and first == 10 ** (length - 1):  # every longer number too
            out.append(f"[1-9]{_digits(length - 1, last - 1)}")
            break
        top = min(top, high) if high is not None else top
        if first <= top:
            out.extend(_same_length(str(first), str(top)))
    return out


def _same_length(x: str, y: str) -> list[str]:
    """Alternatives for the numbers x..y, both written with the same number of digits."""
    if x == y:
        return [f'"{x}"']
    if x[0] == y[0]:
        return [f'"{x[0]}" ' + _group(_same_length(x[1:], y[1:]))]
    n = len(x) - 1
    out = []
    first, last = int(x[0]), int(y[0])
    if x[1:] != "0" * n:  # x's leading digit with the rest of its run
        out.append(f'"{x[0]}" ' + _group(_same_length(x[1:], "9" * n)))
        first += 1
    tail = None
    if y[1:] != "9" * n:
        tail = f'"{y[0]}" ' + _group(_same_length("0" * n, y[1:]))
        last -= 1
    if first <= last:
        digit = f'"{first}"' if first == last else f"[{first}-{last}]"
        out.append(digit + _digits(n, n))
    if tail:
        out.append(tail)
    return out


def _digits(low: int, high: int) -> str:
    """`low` to `high` more digits."""
    if high == 0:
        return ""
    if low == high:
        return " [0-9]" if low == 1 else f" [0-9]{{{low}}}"
    return f" [0-9]{{{low},{high}}}"


def _group(alternatives: list[str]) -> str:
    return alternatives[0] if len(alternatives) == 1 else "(" + " | ".join(alternatives) + ")"
