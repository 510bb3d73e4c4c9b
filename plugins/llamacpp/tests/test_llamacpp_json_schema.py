"""JSON schemas to grammars: every sampled output validates, integer ranges are exact, and
what can't be enforced is a 400."""

from __future__ import annotations

import ctypes
import json

import pytest

from llama_api import errors
from llama_api.contract.records import ResponseFormat

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed")

from llama_api_llamacpp.json_schema import integer_range, schema_to_gbnf
from llama_api_llamacpp.tiny import tiny_vocab


class GrammarMatcher:
    """Asks llama.cpp's own grammar engine whether a text is a whole sentence of a grammar,
    one character token at a time, on the tiny model's vocabulary."""

    def __init__(self, model):
        self.lib, self.vocab = model.lib, model.vocab
        tokens = tiny_vocab()[0]
        self.ids = {ch: tokens.index(f"<0x{ord(ch):02X}>") for ch in "-+. e"}
        self.ids.update({d: tokens.index(d) for d in "0123456789"})
        self.eos = self.lib.llama_vocab_eos(self.vocab)

    def _allowed(self, sampler, token) -> bool:
        lib = self.lib
        data = (lib.llama_token_data * 1)(lib.llama_token_data(token, 0.0, 0.0))
        array = lib.llama_token_data_array(data, 1, -1, False)
        lib.llama_sampler_apply(sampler, ctypes.byref(array))
        return data[0].logit != float("-inf")

    def accepts(self, gbnf: str, text: str) -> bool:
        sampler = self.lib.llama_sampler_init_grammar(self.vocab, gbnf.encode(), b"root")
        assert sampler, gbnf
        try:
            for ch in text:
                token = self.ids[ch]
                if not self._allowed(sampler, token):
                    return False
                self.lib.llama_sampler_accept(sampler, token)
            return self._allowed(sampler, self.eos)
        finally:
            self.lib.llama_sampler_free(sampler)


RANGES = [(1, 5000), (0, 0), (-7, -7), (-12, 7), (-150, -99), (9, 11), (100, 199),
          (99, 1001), (-1, 1), (0, 9), (10, 99), (-1000, 0), (123, 456), (5, None),
          (None, -3), (None, 20), (-30, None), (990, None), (None, None)]


@pytest.mark.parametrize("low,high", RANGES)
def test_integer_range_grammar_is_exact(tiny_plain, low, high):
    matcher = GrammarMatcher(tiny_plain)
    gbnf = f"root ::= {integer_range(low, high)}"
    start = (low if low is not None else (high if high is not None else 0) - 100) - 50
    end = (high if high is not None else (low if low is not None else 0) + 100) + 50
    for n in range(start, end + 1):
        inside = (low is None or n >= low) and (high is None or n <= high)
        assert matcher.accepts(gbnf, str(n)) == inside, (low, high, n, gbnf)
    # JSON's integer syntax only: no leading zeros, no "-0", no "+", no fraction
    for text in ("007", "-0", "+5", "5.0", "", "-"):
        assert not matcher.accepts(gbnf, text), (low, high, text)


def test_unbounded_integers_of_many_digits(tiny_plain):
    matcher = GrammarMatcher(tiny_plain)
    # unbounded sides stop at 16 digits, or at the bound's own length when it is longer
    gbnf = f"root ::= {integer_range(10**17, None)}"
    assert matcher.accepts(gbnf, str(10**17)) and matcher.accepts(gbnf, str(10**17 + 7))
    assert not matcher.accepts(gbnf, str(10**17 - 1))
    assert matcher.accepts(f"root ::= {integer_range(None, None)}", "-" + "9" * 16)


@pytest.mark.parametrize("schema,inside,outside", [
    ({"type": "integer", "minimum": 1, "maximum": 5000}, [1, 4999, 5000], [0, -3, 5001]),
    ({"type": "integer", "minimum": 3}, [3, 40, 10**9], [2, -1, -300]),  # a lone minimum
    ({"type": "integer", "maximum": -2}, [-2, -90], [-1, 0, 5]),  # a lone maximum
    ({"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10}, [1, 9], [0, 10]),
    ({"type": "integer", "minimum": 0, "exclusiveMinimum": 4}, [5], [4, 0]),
    ({"type": "integer", "minimum": 2.5, "maximum": 7.5}, [3, 7], [2, 8]),
    ({"type": "integer", "minimum": 5, "exclusiveMinimum": True}, [6], [5]),  # draft 4
])
def test_schema_integer_bounds(tiny_plain, schema, inside, outside):
    matcher = GrammarMatcher(tiny_plain)
    gbnf = schema_to_gbnf(schema, "response_format")
    for n in inside:
        assert matcher.accepts(gbnf, str(n)), (schema, n)
    for n in outside:
        assert not matcher.accepts(gbnf, str(n)), (schema, n)


SCHEMAS = [
    {"type": "object", "properties": {
        "count": {"type": "integer", "minimum": 1, "maximum": 5000},
        "offset": {"type": "integer", "minimum": -20, "exclusiveMaximum": 0},
        "big": {"type": "integer", "minimum": 100},
    }, "required": ["count", "offset", "big"]},
    {"type": "object", "properties": {
        "color": {"enum": ["red", "green", 3, None]},
        "kind": {"const": "cat"},
        "flag": {"type": "boolean"},
    }, "required": ["color", "kind"], "additionalProperties": False},
    {"type": "object", "properties": {
        "owner": {"type": "object", "properties": {
            "name": {"type": "string", "minLength": 2, "maxLength": 6},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 3},
                     "minItems": 1, "maxItems": 3},
        }, "required": ["name", "tags"]},
        "scores": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
                   "minItems": 2, "maxItems": 4},
    }, "required": ["owner", "scores"]},
    {"type": "object", "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
        "word": {"type": "string", "pattern": "^(ab|cd){1,3}$"},
        "maybe": {"type": ["integer", "null"], "minimum": 10, "maximum": 12},
        "either": {"anyOf": [{"type": "integer", "maximum": -5}, {"type": "string",
                                                                   "maxLength": 2}]},
    }, "required": ["code", "word", "maybe", "either"]},
    {"type": "array", "items": {"type": "object", "properties": {
        "n": {"type": "number"}, "s": {"type": "string"}}, "required": ["s"]},
     "maxItems": 3},
    {"$defs": {"Point": {"type": "object", "properties": {
        "x": {"type": "integer", "minimum": -5, "maximum": 5},
        "y": {"type": "integer", "minimum": -5, "maximum": 5}}, "required": ["x", "y"]}},
     "type": "object", "properties": {"path": {"type": "array", "items": {"$ref": "#/$defs/Point"},
                                                "minItems": 1, "maxItems": 2},
                                       "when": {"type": "string", "format": "date"}},
     "required": ["path", "when"]},
]


@pytest.mark.parametrize("index", range(len(SCHEMAS)))
def test_every_sampled_output_validates(tiny, collect, index):
    schema = SCHEMAS[index]
    validator = jsonschema.Draft202012Validator(schema)
    finished = 0
    for seed in range(12):
        text, deltas = collect(tiny, prompt="hello", seed=seed, temperature=1.5, min_p=0.0,
                               top_k=0, max_tokens=400,
                               response_format=ResponseFormat(type="json_schema",
                                                              schema=schema))
        if deltas[-1].finish_reason == "length":
            continue  # a long string cut short: not an answer
        finished += 1
        value = json.loads(text)
        errors_found = [e.message for e in validator.iter_errors(value)]
        assert not errors_found, (seed, text, errors_found)
    assert finished >= 6


def test_strings_never_hold_raw_control_characters(tiny, collect):
    # The tiny vocabulary has a "\n" token: a string rule that let it in would emit JSON
    # that json.loads refuses.
    schema = {"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]}
    (newline,) = tiny.tokenize("\n", add_bos=False, special=False)[-1:]
    for seed in range(6):
        text, deltas = collect(tiny, prompt="hello", seed=seed, temperature=1.0,
                               max_tokens=60, logit_bias={newline: 8.0},
                               response_format=ResponseFormat(type="json_schema",
                                                              schema=schema))
        if deltas[-1].finish_reason == "stop":
            assert isinstance(json.loads(text)["s"], str)
        value = text[text.index(":") + 1:].strip()
        assert not any(ch < " " for ch in value), text


@pytest.mark.parametrize("schema", [
    {"type": "number", "minimum": 0},
    {"type": "integer", "multipleOf": 3},
    {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
    {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]},
    {"type": "object", "minProperties": 1},
    {"type": "string", "pattern": "^\\d+$"},
    {"type": "string", "pattern": "^[^a]+$"},
    {"type": "string", "pattern": "^a$", "maxLength": 3},
    {"type": "string", "format": "email"},
    {"oneOf": [{"type": "object", "properties": {"a": {"type": "integer"}}},
               {"type": "object", "properties": {"b": {"type": "integer"}}}]},
    {"type": "integer", "minimum": 5, "maximum": 4},
    {"not": {"type": "string"}},
])
def test_what_cannot_be_enforced_is_a_bad_request(tiny_plain, collect, schema):
    with pytest.raises(errors.BadRequest) as info:
        collect(tiny_plain, prompt="hi", response_format=ResponseFormat(type="json_schema",
                                                                         schema=schema))
    assert info.value.param == "response_format"
