"""Schema-aware fuzzing through a real llama.cpp worker: every JSON-schema keyword the server
reads, with very large, very small and pathological values, alone and nested at random, as
`response_format`, as a required tool's parameters, and raw `grammar` text. No answer may be
a 5xx, every error has OpenAI's shape, and the worker that served the first request serves
the last (nothing crashed it). The server runs under an address-space limit (`tiny_server`)."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("LLAMA_API_FUZZ_EXAMPLES", "40"))

HUGE = [2001, 10**5, 10**9, 10**30, 1e308, 2**63]
SMALL = [0, -1, -(10**9), -1e308]
ODD = [None, True, "7", [], {}, 1.5, [1, 2]]
VALUES = HUGE + SMALL + ODD

# Each keyword in a schema of the type that reads it.
KEYWORDS = {
    "minLength": "string", "maxLength": "string", "pattern": "string", "format": "string",
    "minItems": "array", "maxItems": "array", "items": "array", "prefixItems": "array",
    "minimum": "integer", "maximum": "integer", "exclusiveMinimum": "integer",
    "exclusiveMaximum": "integer", "properties": "object", "required": "object",
    "additionalProperties": "object", "enum": None, "const": None, "anyOf": None,
    "oneOf": None, "allOf": None, "$ref": None, "type": None,
}
PATHOLOGICAL = [
    {"type": "string", "pattern": "(a{0,1000}){0,1000}"},
    {"type": "string", "pattern": "(" * 500 + "a" + ")" * 500},
    {"type": "string", "pattern": "a{2001}"},
    {"enum": ["x" * 100000]},
    {"enum": list(range(5000))},
    {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(2000)}},
    {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
    {"type": "integer", "minimum": 10**18, "maximum": 10**18 + 10**17},
    {"type": "array", "items": {"type": "array", "items": {"type": "string", "maxLength": 2000},
                                "maxItems": 2000}, "maxItems": 2000},
]
GRAMMARS = [
    'root ::= "a"{0,2001}', 'root ::= "a"{2001}', 'root ::= ("a"{0,2000}){0,2000}',
    "root ::= " + "(" * 5000 + '"a"' + ")" * 5000, "root ::= root", "root ::= x",
    "root ::= [", 'root ::= "' + "\\" * 1001 + '"', "x" * (600 * 1024),
    "root ::= " + " | ".join(f'"{i}"' for i in range(20000)),
]


def keyword_schema(keyword: str, value) -> dict:
    kind = KEYWORDS[keyword]
    return {"type": kind, keyword: value} if kind else {keyword: value}


def as_response_format(schema) -> dict:
    return {"response_format": {"type": "json_schema",
                                "json_schema": {"name": "fuzz", "schema": schema}}}


def as_required_tool(schema) -> dict:
    parameters = {"type": "object", "properties": {"x": schema}, "required": ["x"]}
    return {"tools": [{"type": "function", "function": {"name": "f", "parameters": parameters}}],
            "tool_choice": "required"}


def answered_sanely(tiny_chat, body: dict) -> None:
    answer = tiny_chat(max_tokens=3, **body)
    assert answer.status_code < 500, (json.dumps(body)[:300], answer.text[:500])
    if answer.status_code >= 400:
        error = answer.json()["error"]
        assert isinstance(error["message"], str) and error["type"], answer.text


@pytest.fixture(scope="module")
def worker_pid(tiny_server, tiny_chat):
    """The worker's pid before the fuzzing; the last test checks it is still the one."""
    assert tiny_chat(max_tokens=1).status_code == 200
    return tiny_server.health()["workers"]["tiny"]


@pytest.mark.parametrize("keyword", KEYWORDS)
def test_every_keyword_with_extreme_values(tiny_chat, worker_pid, keyword):
    for value in VALUES:
        schema = keyword_schema(keyword, value)
        answered_sanely(tiny_chat, as_response_format(schema))
    answered_sanely(tiny_chat, as_required_tool(keyword_schema(keyword, HUGE[1])))


@pytest.mark.parametrize("schema", PATHOLOGICAL, ids=lambda s: json.dumps(s)[:40])
def test_pathological_schemas(tiny_chat, worker_pid, schema):
    answered_sanely(tiny_chat, as_response_format(schema))
    answered_sanely(tiny_chat, as_required_tool(schema))


@pytest.mark.parametrize("grammar", GRAMMARS, ids=lambda g: g[:30])
def test_pathological_grammars(tiny_chat, worker_pid, grammar):
    answered_sanely(tiny_chat, {"grammar": grammar})


def schemas():
    leaves = st.builds(keyword_schema, st.sampled_from(sorted(KEYWORDS)), st.sampled_from(VALUES))
    return st.recursive(leaves, lambda inner: st.one_of(
        st.builds(lambda s: {"type": "array", "items": s}, inner),
        st.builds(lambda d: {"type": "object", "properties": d,
                             "required": sorted(d)[:1]},
                  st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3)),
        st.builds(lambda parts: {"anyOf": parts}, st.lists(inner, min_size=1, max_size=3)),
    ), max_leaves=8)


@seed(20261207)
@settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
          suppress_health_check=list(HealthCheck))
@given(schema=schemas())
def test_random_nested_schemas(tiny_chat, worker_pid, schema):
    answered_sanely(tiny_chat, as_response_format(schema))


def test_the_worker_survived_the_fuzzing(tiny_server, worker_pid):
    assert tiny_server.health()["workers"]["tiny"] == worker_pid
