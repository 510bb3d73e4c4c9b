"""What a backend receives: the core decodes, checks and normalizes each request once."""

from __future__ import annotations

import msgspec
import pytest
from support import read_events

from llama_api import errors
from llama_api.api.chat import chat_requests
from llama_api.api.completions import completion_requests
from llama_api.api.schemas.openai import ChatCompletionRequest, CompletionRequest
from llama_api.contract.records import ResponseFormat

TOOLS = [{"type": "function", "function": {"name": "weather", "description": "d",
                                           "parameters": {"type": "object"}}},
         {"type": "function", "function": {"name": "time"}}]


def decode(body: dict, type_):
    """Decode a body from JSON, as the server does."""
    return msgspec.json.decode(msgspec.json.encode(body), type=type_)


def normalized_chat(**fields):
    """The requests a backend gets for a chat completion of `fields` (n fans out)."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return chat_requests(decode(body, ChatCompletionRequest))


def test_content_parts_become_text_and_absent_fields_are_left_out():
    [request] = normalized_chat(messages=[
        {"role": "system", "content": None},
        {"role": "user", "content": [{"type": "text", "text": "a "}, "b", {"type": "text"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
        {"role": "tool", "content": "42", "tool_call_id": "1"},
    ])
    assert request.messages == [
        {"role": "system", "content": ""},
        {"role": "user", "content": "a b"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]},
        {"role": "tool", "content": "42", "tool_call_id": "1"},
    ]


def test_a_non_text_part_is_not_supported_naming_the_message():
    # (image parts are kept for vision models: api/images.py, tests/test_images.py)
    with pytest.raises(errors.NotSupported) as info:
        normalized_chat(messages=[{"role": "user", "content": "x"},
                       {"role": "user", "content": [{"type": "input_audio"}]}])
    assert info.value.param == "messages[1].content" and info.value.status == 400


def test_tools_and_tool_choice_are_normalized():
    [request] = normalized_chat(tools=TOOLS,
                                tool_choice={"type": "function", "function": {"name": "time"}})
    assert request.tools == [
        {"type": "function", "function": {"name": "weather", "description": "d",
                                          "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "time"}},
    ]
    assert (request.tool_choice, request.tool_name) == ("function", "time")
    assert normalized_chat(tools=TOOLS, tool_choice="required")[0].tool_choice == "required"
    assert normalized_chat(tools=TOOLS)[0].tool_choice is None
    assert normalized_chat(tool_choice="none")[0].tools is None


def test_a_tool_choice_that_names_no_tool_is_refused():
    with pytest.raises(errors.BadRequest) as info:
        normalized_chat(tools=TOOLS,
                        tool_choice={"type": "function", "function": {"name": "nope"}})
    assert info.value.param == "tool_choice" and "nope" in info.value.message
    with pytest.raises(errors.BadRequest) as info:
        normalized_chat(tool_choice="required")
    assert info.value.param == "tool_choice"


def test_legacy_functions_become_tools():
    [request] = normalized_chat(functions=[{"name": "weather"}],
                                function_call={"name": "weather"})
    assert request.tools == [{"type": "function", "function": {"name": "weather"}}]
    assert (request.tool_choice, request.tool_name) == ("function", "weather")
    with pytest.raises(errors.BadRequest) as info:
        normalized_chat(functions=[{"name": "weather"}], function_call={"name": "other"})
    assert info.value.param == "function_call"


def test_response_format_becomes_one_struct_and_text_means_none():
    schema = {"type": "object"}
    assert normalized_chat(response_format={"type": "text"})[0].response_format is None
    assert normalized_chat(response_format={"type": "json_object"})[0].response_format == \
        ResponseFormat(type="json_object")
    assert normalized_chat(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": schema}})[0].response_format == \
        ResponseFormat(type="json_schema", schema=schema)


def test_sampling_fields_and_n_fan_out():
    requests = normalized_chat(n=3, seed=7, stop="\n", max_completion_tokens=5, logprobs=True,
                    top_logprobs=2, logit_bias={"12": -100, "0": 3.5}, mirostat_mode=2)
    assert [r.seed for r in requests] == [7, 8, 9]
    first = requests[0]
    assert first.stop == ["\n"] and first.max_tokens == 5 and first.logprobs == 2
    assert first.logit_bias == {12: -100.0, 0: 3.5}
    assert first.extra == {"mirostat_mode": 2}
    assert normalized_chat(stop=["", "x"])[0].stop == ["x"]


def test_completion_prompts_fan_out_per_prompt_and_choice():
    body = decode({"model": "m", "prompt": [[1, 2], [3]], "n": 2, "echo": True},
                  CompletionRequest)
    requests = completion_requests(body)
    assert [r.prompt for r in requests] == [[1, 2], [1, 2], [3], [3]]
    assert all(r.echo for r in requests)
    [fim] = completion_requests(decode({"model": "m", "prompt": "a", "suffix": "b"},
                                       CompletionRequest))
    assert (fim.prompt, fim.suffix) == ("a", "b")  # the backend decides whether it can fill in


BAD_FIELDS = [
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"-1": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"min_p": 1.5}, "min_p"),
    ({"top_k": -1}, "top_k"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"repeat_penalty": -0.1}, "repeat_penalty"),
    ({"repeat_penalty": 0}, "repeat_penalty"),
    ({"stop": ["s"] * 17}, "stop"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0].function.name"),
    ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages[0].content[0].type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages[0].content"),
]


@pytest.mark.parametrize("fields,param", BAD_FIELDS, ids=[p for _, p in BAD_FIELDS])
def test_out_of_range_fields_are_400_naming_the_field(shared_client, fields, param):
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], **fields}
    reply = shared_client.post(shared_client.v1 + "/chat/completions", json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param
    assert f"`{param}`" in reply.json()["error"]["message"]


@pytest.mark.parametrize("body", [
    {"prompt": [1, 2**31]},
    {"prompt": [[5, 2**40]]},
    {"prompt": "hi", "logit_bias": {str(2**31): 1}},
])
def test_a_token_id_past_32_bits_is_a_400_naming_the_field(shared_client, body):
    reply = shared_client.post(shared_client.v1 + "/completions",
                               json={"model": "fast", "max_tokens": 1, **body})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"].startswith(("prompt", "logit_bias")), error
    assert "2147483647" in error["message"]  # the schema's bound, not a backend's refusal


def test_the_backend_receives_normalized_values(client, events_file):
    reply = client.post(client.v1 + "/chat/completions", json={
        "model": "fast", "max_tokens": 2, "logit_bias": {"7": 1.5}, "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "response_format": {"type": "json_object"},
        "messages": [{"role": "user", "content": [{"type": "text", "text": "red "},
                                                  {"type": "text", "text": "blue"}]}]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == "red blue"
    [start] = [e for e in read_events(events_file) if e["event"] == "start"]
    received = start["request"]
    assert received["contents"] == ["red blue"]
    assert received["logit_bias"] == [[7, 1.5]]  # token ids arrive as ints
    assert (received["tool_choice"], received["tool_name"]) == ("function", "weather")
    assert received["response_format"] == {"type": "json_object"}
