"""The Node SDKs (the `openai` and `@anthropic-ai/sdk` packages of tests/node) against a real
server on echo models: plain, streamed and tool-calling requests in each of their APIs, run as
tests/node/sdk/*.mjs scripts that print what the SDK handed back.

The echo model repeats the prompt's words; ONCE ends its turn, CALL calls each tool once, and
after a tool result it answers in words."""

from __future__ import annotations

import pytest
from node_clients import NODE_DIR, require_node_clients, run_script
from support import echo_server

SCRIPTS = NODE_DIR / "sdk"


@pytest.fixture(scope="module")
def node():
    return require_node_clients()


@pytest.fixture(scope="module")
def sdk_server(node, tmp_path_factory):
    """A server on the echo model `fast`."""
    folder = tmp_path_factory.mktemp("node-sdks")
    with echo_server(folder / "models", models={"fast": {}},
                     events=folder / "events.jsonl") as running:
        yield running


def run(node, script: str, server, tmp_path) -> dict[str, dict]:
    results = run_script(node, SCRIPTS / script, server.url, tmp_path)
    return {result.pop("case"): result for result in results}


def test_openai_chat_completions_plain_streamed_and_tool_calls(node, sdk_server, tmp_path):
    cases = run(node, "openai_chat.mjs", sdk_server, tmp_path)
    assert cases["plain"] == {"text": "hello from node ONCE", "finish": "stop", "usage": {
        "prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}}
    streamed = cases["stream"]
    assert "".join(streamed["deltas"]) == "streamed from node ONCE"
    assert len(streamed["deltas"]) > 1 and streamed["finish"] == "stop"
    assert streamed["usage"]["completion_tokens"] == 4
    assert cases["tool_call"]["finish"] == "tool_calls"
    assert [(c["name"], c["arguments"]) for c in cases["tool_call"]["calls"]] == [
        ("get_weather", {"words": 2})]
    assert cases["tool_result"] == {"text": "CALL it sunny ONCE", "finish": "stop"}


def test_openai_responses_plain_streamed_and_function_calls(node, sdk_server, tmp_path):
    cases = run(node, "openai_responses.mjs", sdk_server, tmp_path)
    plain = cases["plain"]
    assert (plain["text"], plain["status"]) == ("hello from node ONCE", "completed")
    assert (plain["usage"]["input_tokens"], plain["usage"]["output_tokens"]) == (4, 4)
    streamed = cases["stream"]
    assert "".join(streamed["deltas"]) == "streamed from node ONCE" == streamed["text"]
    assert (streamed["first"], streamed["last"]) == ("response.created", "response.completed")
    assert streamed["status"] == "completed"
    assert [(c["name"], c["arguments"]) for c in cases["tool_call"]["calls"]] == [
        ("get_weather", {"words": 2})]
    # the output goes back with previous_response_id: the server's stored turn plus it
    assert cases["tool_result"] == {"text": "CALL it sunny ONCE", "status": "completed"}


def test_anthropic_sdk_messages_plain_streamed_and_tool_use(node, sdk_server, tmp_path):
    cases = run(node, "anthropic_messages.mjs", sdk_server, tmp_path)
    plain = cases["plain"]
    assert plain["content"] == [{"type": "text", "text": "be brief hello from node ONCE"}]
    assert plain["stop"] == "end_turn"
    assert (plain["usage"]["input_tokens"], plain["usage"]["output_tokens"]) == (6, 6)
    streamed = cases["stream"]
    assert "".join(streamed["deltas"]) == "streamed from node ONCE"
    assert streamed["content"] == [{"type": "text", "text": "streamed from node ONCE"}]
    assert streamed["stop"] == "end_turn"
    assert cases["tool_use"]["stop"] == "tool_use"
    assert [(u["name"], u["input"]) for u in cases["tool_use"]["uses"]] == [
        ("get_weather", {"words": 2})]
    assert cases["tool_result"] == {"content": [{"type": "text", "text": "CALL it sunny ONCE"}],
                                    "stop": "end_turn"}
