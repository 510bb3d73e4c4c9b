"""Grammar work is bounded before it starts: a schema or grammar past the limits is a 400
naming the keyword, its value and the limit, and none can crash the worker or grow it
without end. Through a real server, each case from the hostile-request report (a 200-byte
schema that segfaulted the worker; one that grew it to 22.9 GB) answers 4xx while a stream
on the same model finishes; the server runs under an address-space limit, so that a
regression fails here rather than waking the kernel's OOM killer."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")

from llama_api import errors
from llama_api_llamacpp.grammar_limits import (
    MAX_ALTERNATIVES,
    MAX_BRANCHES,
    MAX_GRAMMAR_BYTES,
    MAX_NESTING,
    MAX_PROPERTIES,
    MAX_REPEAT,
    check_grammar,
    repetition,
)
from llama_api_llamacpp.json_schema import schema_to_gbnf


def refused(schema: dict) -> str:
    with pytest.raises(errors.BadRequest) as raised:
        schema_to_gbnf(schema, "response_format")
    assert raised.value.param == "response_format"
    return raised.value.message


# -- the limits, one by one ------------------------------------------------------------

@pytest.mark.parametrize(("schema", "keyword", "value"), [
    ({"type": "string", "maxLength": 30000}, "maxLength", 30000),
    ({"type": "string", "minLength": 2001}, "minLength", 2001),
    ({"type": "array", "maxItems": 100000}, "maxItems", 100000),
    ({"type": "array", "minItems": 10**9}, "minItems", 10**9),
    ({"enum": [f"v{i}" for i in range(MAX_ALTERNATIVES + 1)]}, "the number of enum values",
     MAX_ALTERNATIVES + 1),
    ({"anyOf": [{"const": i} for i in range(MAX_ALTERNATIVES + 1)]},
     "the number of anyOf schemas", MAX_ALTERNATIVES + 1),
    ({"type": "integer", "minimum": 1e300}, "minimum", 1e300),
    ({"type": "object", "properties": {f"p{i}": {} for i in range(MAX_PROPERTIES + 1)}},
     "the number of properties", MAX_PROPERTIES + 1),
    ({"type": "string", "pattern": "a" * 1001}, "the length of pattern", 1001),
])
def test_a_size_past_its_limit_is_a_400_naming_keyword_value_and_limit(schema, keyword, value):
    message = refused(schema)
    assert keyword in message and str(value) in message and "limit" in message


def test_schemas_nested_past_the_limit_are_refused():
    schema: dict = {"type": "string"}
    for _ in range(100):
        schema = {"type": "array", "items": schema}
    assert "nesting of schemas" in refused(schema)


def test_a_schema_of_too_many_parts_in_all_is_refused():
    many = {"type": "object", "properties": {
        f"p{i}": {"enum": [f"v{j}" for j in range(999)]} for i in range(20)}}
    assert "the schema's size" in refused(many)


def test_a_bound_at_the_limit_compiles_to_a_grammar_as_small_as_a_small_bound():
    small = schema_to_gbnf({"type": "string", "maxLength": 20}, "response_format")
    large = schema_to_gbnf({"type": "string", "maxLength": MAX_REPEAT}, "response_format")
    assert len(large) - len(small) == len(str(MAX_REPEAT)) - len("20")
    check_grammar(large, "response_format")  # within the grammar limits too


@pytest.mark.parametrize(("args", "gbnf"), [
    ((0, 1), "x?"), ((0, None), "x*"), ((1, None), "x+"), ((3, None), "x{3,}"),
    ((2, 2), "x{2}"), ((0, 2000), "x{0,2000}"), ((0, 0), ""),
])
def test_repetition_uses_llama_cpps_bounded_syntax(args, gbnf):
    assert repetition("x", *args) == gbnf


def test_repetition_with_a_separator_puts_it_between_items():
    assert repetition("x", 0, None, '","') == '(x ("," x)*)?'
    assert repetition("x", 1, 3, '","') == 'x ("," x){0,2}'
    assert repetition("x", 0, 1, '","') == "(x)?"


@pytest.mark.parametrize(("gbnf", "what"), [
    ("root ::= " + "(" * (MAX_NESTING + 1) + '"a"' + ")" * (MAX_NESTING + 1),
     "nesting of parentheses"),
    ('root ::= "a"{0,5000}', "the repetition ({0,5000})"),
    ('root ::= "a"{3000}', "the repetition ({3000})"),
    ('root ::= "a"{' + "9" * 5000 + "}", "the repetition"),
    ('root ::= "' + "a" * MAX_GRAMMAR_BYTES + '"', "size"),
])
def test_a_grammar_past_the_limits_is_refused(gbnf, what):
    with pytest.raises(errors.BadRequest) as raised:
        check_grammar(gbnf, "grammar")
    assert what in raised.value.message and raised.value.param == "grammar"


@pytest.mark.parametrize("gbnf", [
    'root ::= item{0,1000}\nitem ::= "x"{0,1000}',  # minutes per token in llama.cpp
    'root ::= ("x"?){0,3}',
    'root ::= ("a" | ""){2,}',
    'root ::= inner{0,10}\ninner ::= maybe maybe\nmaybe ::= "y"?',
])
def test_a_repetition_of_what_can_match_nothing_is_refused(gbnf):
    with pytest.raises(errors.BadRequest, match="can match nothing"):
        check_grammar(gbnf, "grammar")


def test_more_parses_open_at_once_than_the_limit_are_refused():
    many = "root ::= " + " | ".join(f'"v{i}"' for i in range(MAX_BRANCHES + 1))
    with pytest.raises(errors.BadRequest, match="parses open at once"):
        check_grammar(many, "grammar")
    nested = 'root ::= a | a "!"\na ::= b | b "?"\nb ::= ' + " | ".join(
        f'"v{i}"' for i in range(MAX_BRANCHES // 4 + 1))
    with pytest.raises(errors.BadRequest, match="parses open at once"):
        check_grammar(nested, "grammar")


def test_what_the_server_writes_itself_passes_its_own_limits():
    from llama_cpp.llama_grammar import JSON_GBNF

    check_grammar(JSON_GBNF, "response_format")
    check_grammar(schema_to_gbnf({"type": "object", "properties": {
        f"p{i}": {"type": "string", "maxLength": 50} for i in range(MAX_PROPERTIES)}},
        "response_format"), "response_format")
    check_grammar('root ::= ("x"?)? "y"*', "grammar")


def test_a_chain_of_rules_as_long_as_the_grammar_is_checked_without_recursion():
    chain = "root ::= r1\n" + "".join(f"r{i} ::= r{i + 1}\n" for i in range(1, 30000))
    check_grammar(chain + 'r30000 ::= "a"\n', "grammar")
    reverse = "root ::= r30000\n" + "".join(f"r{i} ::= r{i - 1}\n" for i in range(30000, 1, -1))
    with pytest.raises(errors.BadRequest, match="can match nothing"):
        check_grammar(reverse + 'r1 ::= ""\nloop ::= root{2}\n', "grammar")


def test_parentheses_and_braces_inside_literals_and_classes_are_text():
    check_grammar('root ::= "((((" [(){}] "{99999}" # ((( {0,99999}\n', "grammar")


# -- through a real worker ---------------------------------------------------------------

TOOL = {"type": "function", "function": {"name": "f", "parameters": {
    "type": "object", "properties": {"s": {"type": "string", "maxLength": 100000}},
    "required": ["s"]}}}
HOSTILE = {
    "string maxLength 30000": {"response_format": {"type": "json_schema", "json_schema": {
        "name": "s", "schema": {"type": "string", "maxLength": 30000}}}},
    "array maxItems 100000": {"response_format": {"type": "json_schema", "json_schema": {
        "name": "a", "schema": {"type": "array", "items": {"type": "integer"},
                                "maxItems": 100000}}}},
    "required tool maxLength 100000": {"tools": [TOOL], "tool_choice": "required"},
    "array maxItems 10^9": {"response_format": {"type": "json_schema", "json_schema": {
        "name": "a", "schema": {"type": "array", "maxItems": 1000000000}}}},
    "enum of 50,000 strings": {"response_format": {"type": "json_schema", "json_schema": {
        "name": "e", "schema": {"enum": [f"value {i}" for i in range(50000)]}}}},
    "grammar 100,000 parentheses deep": {
        "grammar": "root ::= " + "(" * 100000 + '"a"' + ")" * 100000},
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_schema_is_a_400_and_a_stream_beside_it_finishes(tiny_server, tiny_chat,
                                                                     case):
    assert tiny_chat(max_tokens=1).status_code == 200  # loaded
    pid = tiny_server.health()["workers"]["tiny"]
    with ThreadPoolExecutor(1) as pool:
        beside = pool.submit(tiny_chat, max_tokens=200, temperature=0,
                             logit_bias={"2": -100})  # no end of sequence: all 200 tokens
        answer = tiny_chat(max_tokens=8, **HOSTILE[case])
        stream = beside.result()
    assert answer.status_code == 400, answer.text
    assert "limit" in answer.json()["error"]["message"]
    assert stream.status_code == 200 and stream.json()["usage"]["completion_tokens"] == 200
    assert tiny_server.health()["workers"]["tiny"] == pid  # the same worker: nothing crashed


def test_a_bound_at_the_limit_is_served(tiny_chat):
    answer = tiny_chat(max_tokens=4, response_format={
        "type": "json_schema", "json_schema": {"name": "s", "schema": {
            "type": "string", "maxLength": MAX_REPEAT}}})
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"].startswith('"')
