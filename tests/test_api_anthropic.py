"""POST /v1/messages (Anthropic's Messages API) in-process: the message, the raw event stream,
errors in Anthropic's shape, x-api-key, and how Anthropic's turns reach the backend."""

from __future__ import annotations

import json

import msgspec
import pytest
from support import read_events, sse

from llama_api import errors
from llama_api.api.anthropic import conversation, tool_input
from llama_api.api.schemas.anthropic import MessagesRequest

MESSAGES = "/messages"
TOOLS = [
    {"name": "get_weather", "description": "Weather in a city",
     "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
    {"name": "get_time", "input_schema": {"type": "object"}},
]


def user(text):
    return [{"role": "user", "content": text}]


def post(client, **body):
    return client.post(client.v1 + MESSAGES, json={"model": "fast", "max_tokens": 8, **body})


def anthropic_error(response, status: int, type_: str) -> str:
    """Assert Anthropic's error shape and status; return the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == type_
    return body["error"]["message"]


def test_a_message_with_system_and_text_blocks(shared_client):
    response = post(shared_client, max_tokens=5, system=[{"type": "text", "text": "be brief"}],
                    messages=[{"role": "user", "content": [{"type": "text", "text": "tick tock"}]}],
                    temperature=0.5, top_k=3, stop_sequences=["", "zzz"], metadata={"user_id": "u"})
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("msg_") and body["type"] == "message"
    assert body["role"] == "assistant" and body["model"] == "fast"
    assert body["content"] == [{"type": "text", "text": "be brief tick tock be"}]
    assert body["stop_reason"] == "max_tokens" and body["stop_sequence"] is None
    assert body["usage"] == {"input_tokens": 4, "output_tokens": 5}


def test_a_turn_that_ends_is_end_turn(shared_client):
    body = post(shared_client, max_tokens=50, messages=user("say ONCE")).json()
    assert body["content"] == [{"type": "text", "text": "say ONCE"}]
    assert body["stop_reason"] == "end_turn"


@pytest.mark.parametrize("stream", [False, True])
def test_a_matched_stop_sequence_is_the_stop_reason(shared_client, stream):
    response = post(shared_client, max_tokens=20, messages=user("alpha beta gamma"),
                    stop_sequences=["zzz", "gam"], stream=stream)
    if stream:
        [delta] = [data for name, data in sse(response) if name == "message_delta"]
        assert delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "gam"}
    else:
        body = response.json()
        assert body["content"] == [{"type": "text", "text": "alpha beta "}]
        assert (body["stop_reason"], body["stop_sequence"]) == ("stop_sequence", "gam")


def test_sampling_and_stop_sequences_reach_the_backend(client, events_file):
    post(client, messages=user("a b"), temperature=1.0, top_p=0.5, top_k=7,
         stop_sequences=["", "zz"])
    [start] = [e for e in read_events(events_file) if e["event"] == "start"]
    request = start["request"]
    assert (request["temperature"], request["top_p"], request["top_k"]) == (1.0, 0.5, 7)
    assert request["stop"] == ["zz"] and request["max_tokens"] == 8


def test_tool_use_with_any_and_with_a_named_tool(client, events_file):
    body = post(client, messages=user("CALL now"), tools=TOOLS, tool_choice={"type": "any"}).json()
    assert body["stop_reason"] == "tool_use"
    assert [(b["type"], b["name"], b["input"]) for b in body["content"]] == [
        ("tool_use", "get_weather", {"words": 2}), ("tool_use", "get_time", {"words": 2})]
    assert all(b["id"] for b in body["content"])
    body = post(client, messages=user("CALL now"), tools=TOOLS,
                tool_choice={"type": "tool", "name": "get_time"}).json()
    assert [b["name"] for b in body["content"]] == ["get_time"]
    post(client, messages=user("CALL now"), tools=TOOLS,
         tool_choice={"type": "any", "disable_parallel_tool_use": True})
    requests = [e["request"] for e in read_events(events_file) if e["event"] == "start"]
    assert [(r["tool_choice"], r.get("tool_name")) for r in requests] == [
        ("required", None), ("function", "get_time"), ("required", None)]
    assert [r.get("parallel_tool_calls", True) for r in requests] == [True, True, False]
    assert requests[0]["tools"][0] == {"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city",
        "parameters": TOOLS[0]["input_schema"]}}
    assert "description" not in requests[0]["tools"][1]["function"]


def test_tool_choice_none_and_auto(client, events_file):
    body = post(client, messages=user("CALL now"), tools=TOOLS, tool_choice={"type": "none"}).json()
    assert body["content"][0]["type"] == "text" and body["stop_reason"] == "max_tokens"
    post(client, messages=user("hello"), tools=TOOLS, tool_choice={"type": "auto"})
    post(client, messages=user("hello"), tool_choice={"type": "auto"})  # no tools: fine
    requests = [e["request"] for e in read_events(events_file) if e["event"] == "start"]
    assert [r.get("tool_choice") for r in requests] == ["none", "auto", None]


def test_thinking_comes_back_as_a_thinking_block(shared_client):
    body = post(shared_client, max_tokens=50, messages=user("<think> hmm </think> yes ONCE")).json()
    assert [b["type"] for b in body["content"]] == ["thinking", "text"]
    assert body["content"][0]["thinking"].strip() == "hmm"
    assert body["content"][1]["text"].strip() == "yes ONCE"


def test_the_stream_is_anthropics_event_sequence(shared_client):
    response = post(shared_client, max_tokens=3, stream=True, messages=user("a b"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse(response)
    assert all(name == data["type"] for name, data in events)
    names = [name for name, _ in events]
    assert names[:4] == ["message_start", "ping", "content_block_start", "content_block_delta"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["role"] == "assistant"
    texts = [d["delta"]["text"] for n, d in events if n == "content_block_delta"]
    assert "".join(texts) == "a b a"
    assert {d["index"] for n, d in events if n.startswith("content_block")} == {0}
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"] == {"input_tokens": 2, "output_tokens": 3}


def test_a_streamed_tool_call_is_a_tool_use_block_fed_json(shared_client):
    events = sse(post(shared_client, stream=True, messages=user("CALL"), tools=TOOLS,
                      tool_choice={"type": "tool", "name": "get_weather"}))
    starts = [d for n, d in events if n == "content_block_start"]
    assert len(starts) == 1 and starts[0]["index"] == 0
    block = starts[0]["content_block"]
    assert (block["type"], block["name"], block["input"]) == ("tool_use", "get_weather", {})
    pieces = [d["delta"] for n, d in events if n == "content_block_delta"]
    assert {p["type"] for p in pieces} == {"input_json_delta"} and len(pieces) == 2
    assert json.loads("".join(p["partial_json"] for p in pieces)) == {"words": 1}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    # Two calls in one answer are two blocks, each fed its own arguments.
    events = sse(post(shared_client, stream=True, messages=user("CALL"), tools=TOOLS,
                      tool_choice={"type": "any"}))
    blocks = {d["index"]: d["content_block"]["name"] for n, d in events
              if n == "content_block_start"}
    assert blocks == {0: "get_weather", 1: "get_time"}
    for index in blocks:
        arguments = "".join(d["delta"]["partial_json"] for n, d in events
                            if n == "content_block_delta" and d["index"] == index)
        assert json.loads(arguments) == {"words": 1}
    assert [d["index"] for n, d in events if n == "content_block_stop"] == [0, 1]


def test_streamed_thinking_then_text_are_two_blocks(shared_client):
    events = sse(post(shared_client, max_tokens=50, stream=True,
                      messages=user("<think> hmm </think> yes ONCE")))
    starts = [(d["index"], d["content_block"]["type"]) for n, d in events
              if n == "content_block_start"]
    assert starts == [(0, "thinking"), (1, "text")]
    stops = [d["index"] for n, d in events if n == "content_block_stop"]
    assert stops == [0, 1]
    kinds = {(d["index"], d["delta"]["type"]) for n, d in events if n == "content_block_delta"}
    assert kinds == {(0, "thinking_delta"), (1, "text_delta")}
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"


IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}


@pytest.mark.parametrize("body, field", [
    ({"max_tokens": None}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "tool", "content": "hi"}]}, "messages[0].role"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": [IMAGE]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": [IMAGE]}]}]},
     "messages[0].content[0].content[0]"),
    ({"messages": [{"role": "assistant", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": "x"}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [
        {"type": "tool_use", "id": "t1", "name": "f", "input": {}}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "messages[0].content[0]"),
    ({"temperature": 1.5}, "temperature"),
    ({"top_p": -0.1}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"stop_sequences": ["s"] * 17}, "stop_sequences"),
    ({"tool_choice": {"type": "any"}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice.name"),
    ({"tools": TOOLS, "tool_choice": {"type": "sometimes"}}, "tool_choice"),
    ({"tools": [{"name": "f"}]}, "tools[0].input_schema"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search", "input_schema": {}}]},
     "tools[0]"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_bad_input_is_a_400_in_anthropics_shape(shared_client, body, field):
    full = {"model": "fast", "max_tokens": 8, "messages": user("hi"), **body}
    full = {key: value for key, value in full.items() if value is not None}
    response = shared_client.post(shared_client.v1 + MESSAGES, json=full)
    message = anthropic_error(response, 400, "invalid_request_error")
    assert f"`{field}" in message


def test_not_json_and_unknown_model_and_a_failing_backend(shared_client):
    response = shared_client.post(shared_client.v1 + MESSAGES, content=b"{nope",
                                  headers={"content-type": "application/json"})
    anthropic_error(response, 400, "invalid_request_error")
    message = anthropic_error(post(shared_client, model="nope", messages=user("hi")),
                              404, "not_found_error")
    assert "'nope'" in message and "fast" in message
    anthropic_error(post(shared_client, messages=user("please RAISE"), stream=True), 503,
                    "api_error")
    anthropic_error(post(shared_client, model="broken", messages=user("hi")), 503, "api_error")
    # The OpenAI routes keep OpenAI's shape.
    response = shared_client.post(shared_client.v1 + "/chat/completions", json={"model": "nope"})
    assert response.status_code == 400 and "param" in response.json()["error"]


def test_x_api_key_is_accepted_like_a_bearer_token(start_app):
    with start_app(api_keys=["sk-one", "sk-two"]) as client:
        message = anthropic_error(post(client, messages=user("hi")), 401, "authentication_error")
        assert "x-api-key" in message
        anthropic_error(client.post(client.v1 + MESSAGES, headers={"x-api-key": "sk-wrong"},
                                    json={"model": "fast", "max_tokens": 2, "messages": user("a")}),
                        401, "authentication_error")
        for headers in ({"x-api-key": "sk-two"}, {"Authorization": "Bearer sk-one"}):
            response = client.post(client.v1 + MESSAGES, headers=headers,
                                   json={"model": "fast", "max_tokens": 2, "messages": user("a")})
            assert response.status_code == 200, response.text
        # Every route takes it; the OpenAI routes answer in OpenAI's shape.
        assert client.get(client.v1 + "/models", headers={"x-api-key": "sk-one"}).status_code == 200
        refused = client.get(client.v1 + "/models", headers={"x-api-key": "sk-"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"


def test_without_api_keys_messages_need_no_key(shared_client):
    assert post(shared_client, messages=user("hi")).status_code == 200


def test_messages_is_in_the_schema_with_its_bounds(shared_client):
    schema = shared_client.get("/schema/openapi.json").json()
    assert "post" in schema["paths"]["/v1/messages"]
    request = schema["components"]["schemas"]["MessagesRequest"]
    assert "max_tokens" in request["required"]
    assert request["properties"]["temperature"]["maximum"] == 1.0  # Anthropic's range
    assert request["properties"]["stop_sequences"]["maxItems"] == 16


def test_turns_become_the_cores_chat_messages():
    body = msgspec.convert({
        "model": "m", "max_tokens": 1,
        "system": [{"type": "text", "text": "rule one"}, {"type": "text", "text": "rule two"}],
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "let me look", "signature": "s"},
                {"type": "text", "text": "looking"},
                {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "t2", "name": "get_time", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1",
                 "content": [{"type": "text", "text": "sunny"}]},
                {"type": "tool_result", "tool_use_id": "t2", "content": "no clock",
                 "is_error": True},
                {"type": "text", "text": "thanks"}]},
            {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "x"}]},
        ]}, MessagesRequest)
    assert conversation(body) == [
        {"role": "system", "content": "rule one\n\nrule two"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "looking", "tool_calls": [
            {"id": "t1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
            {"id": "t2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "t2", "content": "Error: no clock"},
        {"role": "user", "content": "thanks"},
        {"role": "assistant", "content": ""},
    ]


def test_tool_arguments_that_are_not_an_object_are_a_503_naming_the_tool():
    call = {"id": "c", "function": {"name": "get_weather", "arguments": "[1, 2]"}}
    with pytest.raises(errors.BackendUnavailable, match="get_weather") as raised:
        tool_input(call)
    assert (raised.value.status, raised.value.code) == (503, "invalid_tool_arguments")
    assert tool_input({"function": {"name": "f", "arguments": ""}}) == {}


def test_count_tokens_is_the_messages_input_tokens(shared_client):
    body = {"model": "fast", "system": "be brief", "tools": TOOLS,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "tick tock"}]}]}
    counted = shared_client.post(shared_client.v1 + MESSAGES + "/count_tokens", json=body)
    assert counted.status_code == 200 and set(counted.json()) == {"input_tokens"}
    used = post(shared_client, max_tokens=2, **body).json()["usage"]["input_tokens"]
    assert counted.json()["input_tokens"] == used == 4
    schema = shared_client.get("/schema/openapi.json").json()
    assert "post" in schema["paths"]["/v1/messages/count_tokens"]


def test_count_tokens_refuses_in_anthropics_shape(shared_client):
    url = shared_client.v1 + MESSAGES + "/count_tokens"
    anthropic_error(shared_client.post(url, json={"model": "fast", "messages": []}), 400,
                    "invalid_request_error")
    anthropic_error(shared_client.post(url, json={"model": "nope", "messages": user("hi")}), 404,
                    "not_found_error")
    image = {"model": "fast", "messages": [{"role": "user", "content": [IMAGE]}]}
    anthropic_error(shared_client.post(url, json=image), 400, "invalid_request_error")
