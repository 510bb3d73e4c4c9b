"""Chat on a tiny random-weight GGUF, in-process: chat templates, tool calls (forced,
required, parallel, recognized in free text) and schema-constrained output."""

from __future__ import annotations

import json

import pytest

from llama_api import errors
from llama_api.contract.records import (
    LoadContext,
    ModelSpec,
    ResponseFormat,
)

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")

import llama_api_llamacpp as plugin

PROMPT = "hello world"


def greedy_text(collect, model, **fields):
    return collect(model, prompt=PROMPT, temperature=0.0, **{"max_tokens": 24, **fields})[0]


def test_chat_uses_the_template_from_the_gguf(tiny, collect):
    _text, deltas = collect(tiny, messages=[{"role": "system", "content": "be brief"},
                                           {"role": "user", "content": "hi"}],
                           max_tokens=5, temperature=0.0)
    expected = len(tiny.prompt_tokens("<|system|>be brief<|end|><|user|>hi<|end|><|assistant|>"))
    assert deltas[-1].usage.prompt_tokens == expected


def test_message_content_is_rendered_as_given(tiny, collect):
    # The core joins text parts (and refuses images) before the backend sees a message.
    _, deltas = collect(tiny, messages=[{"role": "user", "content": "h" + "i"}], max_tokens=5,
                        temperature=0.0)
    assert deltas[-1].usage.prompt_tokens == len(tiny.prompt_tokens("<|user|>hi<|end|><|assistant|>"))


@pytest.fixture(scope="module")
def base_model(tiny_dir):
    model = plugin.load_model(
        spec=ModelSpec(id="tiny-base", backend="llamacpp",
                       path=str(tiny_dir / "plain" / "tiny-base.gguf")),
        context=LoadContext(n_threads=1)).model
    yield model
    plugin.unload_model(model=model)


def test_no_chat_template_is_a_clear_error(base_model, collect):
    with pytest.raises(errors.BadRequest, match="no chat template"):
        collect(base_model, messages=[{"role": "user", "content": "hi"}])
    # completions still work
    assert collect(base_model, prompt=PROMPT, max_tokens=3, temperature=0.0)[1][-1].usage.completion_tokens == 3


@pytest.mark.parametrize("options", [
    {"chat_template": "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
                      "{% endfor %}[assistant] "},
    {"chat_format": "chatml"},
])
def test_chat_template_override(tiny_dir, collect, options):
    model = plugin.load_model(
        spec=ModelSpec(id="x", backend="llamacpp",
                       path=str(tiny_dir / "plain" / "tiny-base.gguf"), options=options),
        context=LoadContext(n_threads=1)).model
    try:
        _, deltas = collect(model, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert deltas[-1].usage.completion_tokens <= 3
        assert model.info["chat_template"] is True
    finally:
        plugin.unload_model(model=model)


def test_unknown_chat_format_is_a_load_error(tiny_dir):
    with pytest.raises(errors.ModelLoadError, match="chat_format"):
        plugin.load_model(
            spec=ModelSpec(id="x", backend="llamacpp", path=str(tiny_dir / "tiny.gguf"),
                           options={"chat_format": "no-such-format"}),
            context=LoadContext(n_threads=1))


TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
            "required": ["city"],
        },
    },
}, {
    "type": "function",
    "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"utc": {"type": "boolean"}}, "required": ["utc"]}},
}]


def test_forced_tool_call_streams_arguments(tiny, collect):
    text, deltas = collect(tiny, messages=[{"role": "user", "content": "weather?"}],
                           tools=TOOLS, tool_choice="function", tool_name="get_weather",
                           seed=1, max_tokens=100)
    calls = [c for d in deltas for c in (d.tool_calls or [])]
    assert calls[0].id.startswith("call_") and calls[0].name == "get_weather"
    assert all(c.index == 0 for c in calls)
    arguments = json.loads("".join(c.arguments for c in calls))
    assert arguments["city"] in ("Paris", "Rome")
    assert text == ""
    assert deltas[-1].finish_reason == "tool_calls"


@pytest.mark.parametrize("seed", [1, 2])
def test_required_tool_call(tiny, collect, seed):
    _text, deltas = collect(tiny, messages=[{"role": "user", "content": "weather?"}],
                           tools=TOOLS, tool_choice="required", seed=seed, max_tokens=100,
                           parallel_tool_calls=False)
    (call,) = [c for d in deltas for c in (d.tool_calls or [])]
    assert call.name in ("get_weather", "get_time")
    assert isinstance(json.loads(call.arguments), dict)
    assert deltas[-1].finish_reason == "tool_calls"


@pytest.mark.parametrize("seed", [1, 2, 5])
def test_required_tool_calls_in_parallel(tiny, collect, seed):
    # The grammar allows an array of 1..n calls; with these seeds the tiny model makes
    # one call (seed 1) or two (2, 5), each sent with its own index.
    _text, deltas = collect(tiny, messages=[{"role": "user", "content": "weather?"}],
                           tools=TOOLS, tool_choice="required", seed=seed, max_tokens=300)
    calls = [c for d in deltas for c in (d.tool_calls or [])]
    assert [c.index for c in calls] == list(range(len(calls)))
    assert len(calls) == (1 if seed == 1 else 2)
    assert len({c.id for c in calls}) == len(calls)
    for call in calls:
        assert call.name in ("get_weather", "get_time")
        assert isinstance(json.loads(call.arguments), dict)
    assert deltas[-1].finish_reason == "tool_calls"


def test_tool_choice_is_one_of_the_normalized_choices():
    # The core checks a forced name against `tools` and decodes tool_choice into ToolChoice
    # (a 400 on failure); the backend gets only these.
    import msgspec

    from llama_api.contract.records import ToolChoice

    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"type": "function", "function": {"name": "nope"}}, ToolChoice)
    assert msgspec.convert("function", ToolChoice) == "function"


def test_auto_tool_choice_and_tool_history(tiny, collect):
    messages = [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    _text, deltas = collect(tiny, messages=messages, tools=TOOLS, max_tokens=10, seed=1)
    assert deltas[-1].finish_reason in ("stop", "length", "tool_calls")


def test_parse_tool_calls():
    from llama_api_llamacpp.tools import parse_tool_calls

    names = {"f", "g"}
    text = '<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>\n' \
           '<tool_call>{"name": "g", "arguments": {}}</tool_call>'
    assert parse_tool_calls(text, names) == [
        {"name": "f", "arguments": '{"a": 1}'}, {"name": "g", "arguments": "{}"}]
    assert parse_tool_calls('{"name": "f", "parameters": {"b": 2}}', names) == [
        {"name": "f", "arguments": '{"b": 2}'}]
    assert parse_tool_calls("just text", names) is None
    assert parse_tool_calls('{"name": "h"}', names) is None
    assert parse_tool_calls("<tool_call>{broken", names) is None
    # arguments are always a JSON object: encoded ones must decode, others are not calls
    assert parse_tool_calls('{"name": "f", "arguments": "{\\"a\\": 1}"}', names) == [
        {"name": "f", "arguments": '{"a": 1}'}]
    assert parse_tool_calls('{"name": "f"}', names) == [{"name": "f", "arguments": "{}"}]
    for bad in ('"not json"', '"[1]"', "[1, 2]", "3"):
        assert parse_tool_calls(f'{{"name": "f", "arguments": {bad}}}', names) is None, bad


class FakeRun:
    """Stands in for a generation: yields fixed pieces."""

    def __init__(self, pieces):
        self.pieces = pieces
        self.finish = "stop"

    def __iter__(self):
        from llama_api.contract.records import Delta

        for piece in self.pieces:
            yield Delta(text=piece)

    @property
    def text(self):
        return "".join(self.pieces)

    def final(self, finish=None):
        from llama_api.contract.records import Delta

        return Delta(finish_reason=finish or self.finish)


def auto(pieces, names=("get_weather",), parallel=True):
    from llama_api_llamacpp.tools import tool_deltas

    deltas = list(tool_deltas(FakeRun(pieces), "auto", None, set(names), parallel=parallel))
    text = "".join(d.text for d in deltas)
    calls = [c for d in deltas for c in (d.tool_calls or [])]
    return text, calls, deltas[-1].finish_reason, deltas


@pytest.mark.parametrize("pieces", [
    ["<tool", "_call>", '{"name": "get_weather", ', '"arguments": {"city": "Paris"}}', "</tool_call>"],
    ["  {", '"name": "get_weather", "parameters": {"city": "Paris"}}'],
    ['[{"name": "get_weather", "arguments": {"city": "Paris"}}]'],
])
def test_auto_mode_recognizes_tool_calls(pieces):
    text, calls, finish, _ = auto(pieces)
    assert text == ""
    assert finish == "tool_calls"
    assert calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Paris"}
    assert calls[0].id.startswith("call_")


PARALLEL_CALLS = ["<tool_call>", '{"name": "get_weather", "arguments": {"city": "Paris"}}',
                  "</tool_call>\n<tool", '_call>{"name": "get_time", "arguments": {"utc": true}}',
                  "</tool_call>", "<tool_call>", '{"name": "get_weather", "arguments": ',
                  '{"city": "Rome"}}</tool_call>']


def test_auto_mode_sends_several_calls_with_their_indices():
    text, calls, finish, _ = auto(PARALLEL_CALLS, names=("get_weather", "get_time"))
    assert (text, finish) == ("", "tool_calls")
    assert [(c.index, c.name) for c in calls] == [
        (0, "get_weather"), (1, "get_time"), (2, "get_weather")]
    assert [json.loads(c.arguments) for c in calls] == [
        {"city": "Paris"}, {"utc": True}, {"city": "Rome"}]
    assert len({c.id for c in calls}) == 3
    # parallel_tool_calls false: the first call only
    _, calls, finish, _ = auto(PARALLEL_CALLS, names=("get_weather", "get_time"),
                               parallel=False)
    assert [(c.index, c.name) for c in calls] == [(0, "get_weather")]
    assert finish == "tool_calls"


def test_auto_mode_streams_plain_text_and_holds_back_a_marker():
    pieces = ["Hello", " there", ", <", "tool", "_call>", '{"name": "get_weather", "arguments": {}}']
    text, calls, finish, deltas = auto(pieces)
    assert text == "Hello there, "
    assert len([d for d in deltas if d.text]) >= 2  # streamed, not all at the end
    assert finish == "tool_calls" and calls[0].name == "get_weather"


def test_auto_mode_text_that_only_looks_like_a_call():
    assert auto(["<b>bold</b> text"])[:3] == ("<b>bold</b> text", [], "stop")
    assert auto(["{not json"])[:3] == ("{not json", [], "stop")
    assert auto(['{"name": "other_tool"}'])[:3] == ('{"name": "other_tool"}', [], "stop")
    assert auto(["a < b and c"])[:3] == ("a < b and c", [], "stop")


TOOL_TEMPLATE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>{% endif %}"
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}"
    "{% for call in m.tool_calls or [] %}<call>{{ call.function.arguments | tojson }}</call>"
    "{% endfor %}<|end|>{% endfor %}<|assistant|>"
)


def test_template_that_knows_tools_gets_them_hugging_face_style():
    from llama_api.text.chat_template import ChatTemplate
    from llama_api_llamacpp.prompts import PromptBuilder

    prompts = PromptBuilder("m", ChatTemplate(TOOL_TEMPLATE, bos_token="<s>", eos_token="</s>"))
    assert prompts.knows_tools
    tools = [{"type": "function", "function": {"name": "f", "description": "a <b> c"}}]
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
    ]
    prompt = prompts.render(messages, tools, None).text
    assert '"description": "a <b> c"' in prompt  # no HTML escaping
    assert '<call>{"x": 1}</call>' in prompt  # arguments as a mapping, not a string
    assert "You can call these functions" not in prompt  # no system prompt injected


PYDANTIC_SCHEMA = {  # what openai's client.beta.chat.completions.parse() sends for a model
    "$defs": {
        "Color": {"enum": ["red", "blue"], "title": "Color", "type": "string"},
        "Pet": {
            "properties": {
                "kind": {"const": "cat", "title": "Kind", "type": "string"},
                "age": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 20},
                                  {"type": "null"}]},
            },
            "required": ["kind", "age"], "title": "Pet", "type": "object",
            "additionalProperties": False,
        },
    },
    "properties": {
        "color": {"$ref": "#/$defs/Color"},
        "pets": {"items": {"$ref": "#/$defs/Pet"}, "maxItems": 2, "type": "array"},
        "ok": {"type": "boolean"},
    },
    "required": ["color", "pets", "ok"], "title": "Answer", "type": "object",
    "additionalProperties": False,
}


@pytest.mark.parametrize("seed", range(4))
def test_pydantic_style_schema_with_refs_validates(tiny, collect, seed):
    fmt = ResponseFormat(type="json_schema", schema=PYDANTIC_SCHEMA)
    text, _deltas = collect(tiny, prompt="hi", response_format=fmt, seed=seed, max_tokens=300)
    data = json.loads(text)
    assert set(data) == {"color", "pets", "ok"}
    assert data["color"] in ("red", "blue") and isinstance(data["ok"], bool)
    assert len(data["pets"]) <= 2
    for pet in data["pets"]:
        assert pet["kind"] == "cat"
        assert pet["age"] is None or 0 <= pet["age"] <= 20
