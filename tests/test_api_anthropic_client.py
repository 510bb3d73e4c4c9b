"""The real `anthropic` client against a real server on echo models, behind an API key
(the SDK sends it as `x-api-key`): create, stream, tools, and errors as the SDK raises them."""

from __future__ import annotations

import os
import signal

import pytest
from support import echo_server, read_events

from llama_api.testing import wait_for

anthropic = pytest.importorskip("anthropic")

KEY = "sk-anthropic-test"
TOOLS = [{"name": "get_weather", "description": "Weather in a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]


@pytest.fixture(scope="module")
def anthropic_server(tmp_path_factory):
    """A server on fast and slow echo models that takes the API key KEY."""
    folder = tmp_path_factory.mktemp("anthropic")
    with echo_server(folder / "models", "--api-key", KEY,
                     models={"fast": {}, "slow": {"delay": 0.05}},
                     events=folder / "events.jsonl") as running:
        yield running


@pytest.fixture(scope="module")
def sdk(anthropic_server):
    """The anthropic package's client of `anthropic_server`, with its key."""
    return anthropic.Anthropic(base_url=anthropic_server.url, api_key=KEY, max_retries=0,
                               timeout=60)


def user(text):
    return [{"role": "user", "content": text}]


def test_create_text_max_tokens_and_end_turn(sdk):
    message = sdk.messages.create(model="fast", max_tokens=5, system="be brief",
                                  messages=user("tick tock"))
    assert message.type == "message" and message.role == "assistant" and message.model == "fast"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "be brief tick tock be"
    assert message.stop_reason == "max_tokens" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (4, 5)
    ended = sdk.messages.create(model="fast", max_tokens=50, messages=user("stop here ONCE"))
    assert ended.stop_reason == "end_turn" and ended.content[0].text == "stop here ONCE"


def test_stream_text_is_the_deltas_and_the_final_message_parses(sdk):
    with sdk.messages.stream(model="fast", max_tokens=7, messages=user("one two three"),
                             extra_body={"temperature": 0.2, "top_k": 5}) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1
    assert "".join(pieces) == final.content[0].text == "one two three one two three one"
    assert final.stop_reason == "max_tokens"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 7)
    assert final.id.startswith("msg_")


def test_tool_use_created_and_streamed(sdk):
    message = sdk.messages.create(model="fast", max_tokens=50, messages=user("CALL it"),
                                  tools=TOOLS, tool_choice={"type": "any"})
    assert message.stop_reason == "tool_use"
    [call] = message.content
    assert (call.type, call.name, call.input) == ("tool_use", "get_weather", {"words": 2})
    with sdk.messages.stream(model="fast", max_tokens=50, messages=user("CALL it"),
                             tools=TOOLS, tool_choice={"type": "tool", "name": "get_weather"}
                             ) as stream:
        final = stream.get_final_message()
    [call] = final.content
    assert (call.type, call.name, call.input) == ("tool_use", "get_weather", {"words": 2})
    assert final.stop_reason == "tool_use"
    # The answer goes back as a tool_result turn, which the server takes (without tools
    # this time, or the echo model would call again).
    reply = sdk.messages.create(model="fast", max_tokens=50, messages=[
        *user("CALL it"),
        {"role": "assistant", "content": [call.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                      "content": "sunny"}, {"type": "text", "text": "ONCE"}]},
    ])
    assert reply.stop_reason == "end_turn" and reply.content[0].text == "CALL it sunny ONCE"


def test_bad_input_raises_the_sdks_bad_request_error(sdk):
    cases = [
        {"extra_body": {"temperature": 1.5}},
        {"messages": [{"role": "user", "content": [{"type": "image", "source": {
            "type": "base64", "media_type": "image/png", "data": "AA=="}}]}]},
        {"messages": [{"role": "robot", "content": "hi"}]},
    ]
    for case in cases:
        with pytest.raises(anthropic.BadRequestError) as raised:
            sdk.messages.create(**{"model": "fast", "max_tokens": 5, "messages": user("hi"),
                                   **case})
        assert raised.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        sdk.post("/v1/messages", cast_to=object,
                 body={"model": "fast", "messages": user("hi")})


def test_unknown_model_and_wrong_key(sdk, anthropic_server):
    with pytest.raises(anthropic.NotFoundError) as raised:
        sdk.messages.create(model="nope", max_tokens=5, messages=user("hi"))
    assert raised.value.body["error"]["type"] == "not_found_error"
    stranger = anthropic.Anthropic(base_url=anthropic_server.url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as raised:
        stranger.messages.create(model="fast", max_tokens=5, messages=user("hi"))
    assert raised.value.body == {"type": "error", "error": {
        "type": "authentication_error",
        "message": raised.value.body["error"]["message"]}}
    bearer = anthropic.Anthropic(base_url=anthropic_server.url, auth_token=KEY, max_retries=0)
    assert bearer.messages.create(model="fast", max_tokens=2, messages=user("hi")).content


def test_a_worker_dying_mid_stream_is_an_error_event(sdk, anthropic_server):
    with sdk.messages.stream(model="slow", max_tokens=400, messages=user("a b c")) as stream:
        events = iter(stream)
        while next(events).type != "content_block_delta":
            pass
        def starts():
            return [e for e in read_events(anthropic_server.events)
                    if e["event"] == "start" and e["model"] == "slow"]

        assert wait_for(starts)
        os.kill(starts()[-1]["pid"], signal.SIGKILL)
        with pytest.raises(anthropic.APIStatusError) as raised:
            for _ in events:
                pass
    assert raised.value.body["type"] == "error"
    assert raised.value.body["error"]["type"] == "api_error"


def test_count_tokens(sdk):
    counted = sdk.messages.count_tokens(model="fast", system="be brief",
                                        messages=user("tick tock"), tools=TOOLS)
    used = sdk.messages.create(model="fast", max_tokens=1, system="be brief",
                               messages=user("tick tock"), tools=TOOLS).usage.input_tokens
    assert counted.input_tokens == used == 4
