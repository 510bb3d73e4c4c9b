"""What coding agents send is understood: Anthropic system turns inside `messages`,
`thinking` and `output_config`, each API's reasoning control handed to the backend as one
`think` field, OpenAI's sampling bounds, and error params named after the route's field."""

from __future__ import annotations

import pytest
from support import read_events

ASK = [{"role": "user", "content": "hi ONCE"}]


def received(events_file) -> dict:
    [start] = [e for e in read_events(events_file) if e["event"] == "start"]
    return start["request"]


def test_an_anthropic_system_turn_inside_messages_reaches_the_prompt_in_its_place(
        client, events_file):
    reply = client.post(client.v1 + "/messages?beta=true", headers={
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14"}, json={
        "model": "fast", "max_tokens": 32000, "system": [{"type": "text", "text": "be brief"}],
        "thinking": {"type": "adaptive"}, "output_config": {"effort": "high"},
        "messages": [{"role": "user", "content": "first"},
                     {"role": "system", "content": [{"type": "text", "text": "reminder"}]},
                     {"role": "user", "content": "ONCE"}]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["content"][0]["text"] == "be brief first reminder ONCE"  # echoed
    request = received(events_file)
    assert request["contents"] == ["be brief", "first", "reminder", "ONCE"]
    assert request["think"] is True


@pytest.mark.parametrize(("route", "body", "think"), [
    ("/chat/completions", {"messages": ASK, "reasoning_effort": "none"}, False),
    ("/chat/completions", {"messages": ASK, "reasoning_effort": "high"}, True),
    ("/chat/completions", {"messages": ASK}, None),
    ("/responses", {"input": "hi ONCE", "reasoning": {"effort": "none"}}, False),
    ("/responses", {"input": "hi ONCE", "reasoning": {"effort": "low", "summary": "auto"},
                    "include": ["reasoning.encrypted_content"], "store": False,
                    "prompt_cache_key": "k", "client_metadata": {"a": "b"}}, True),
    ("/messages", {"messages": ASK, "max_tokens": 8, "thinking": {"type": "disabled"}}, False),
    ("/messages", {"messages": ASK, "max_tokens": 8,
                   "thinking": {"type": "enabled", "budget_tokens": 1024}}, True),
])
def test_each_apis_reasoning_control_reaches_the_backend_as_think(client, events_file, route,
                                                                   body, think):
    reply = client.post(client.v1 + route, json={"model": "fast", **body})
    assert reply.status_code == 200, reply.text
    assert received(events_file).get("think") == think


@pytest.mark.parametrize(("route", "body", "param"), [
    ("/chat/completions", {"messages": ASK, "temperature": 7}, "temperature"),
    ("/chat/completions", {"messages": ASK, "temperature": 2.01}, "temperature"),
    ("/completions", {"prompt": "hi", "temperature": 3}, "temperature"),
    ("/responses", {"input": "hi", "temperature": 2.5}, "temperature"),
    ("/responses", {"input": "hi", "top_p": 1.5}, "top_p"),
])
def test_openai_sampling_bounds_are_400s_naming_the_field(shared_client, route, body, param):
    reply = shared_client.post(shared_client.v1 + route, json={"model": "fast", **body})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


def test_a_context_error_on_responses_names_input(shared_client):
    reply = shared_client.post(shared_client.v1 + "/responses", json={
        "model": "fast", "input": " ".join(["w"] * 1001)})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["code"] == "context_length_exceeded"
    assert reply.json()["error"]["param"] == "input"


FUNCTION = {"type": "function", "name": "exec_command", "parameters": {"type": "object"}}


def test_hosted_tools_are_left_out_logged_once_per_model_and_kind(client, events_file,
                                                                   caplog):
    body = {"model": "fast", "input": "CALL now",
            "tools": [{"type": "web_search"}, FUNCTION,
                      {"type": "file_search", "vector_store_ids": ["v"]},
                      {"type": "mcp", "server_label": "x", "server_url": "http://x"}]}
    from llama_api.api import responses

    responses.LEFT_OUT.clear()  # what earlier tests in this process logged
    with caplog.at_level("WARNING", logger="llama_api.api"):
        for _ in range(2):
            reply = client.post(client.v1 + "/responses", json=body)
            assert reply.status_code == 200, reply.text
    [call] = [item for item in reply.json()["output"] if item["type"] == "function_call"]
    assert call["name"] == "exec_command" and "namespace" not in call
    assert [t["function"]["name"] for t in received_last(events_file)["tools"]] == [
        "exec_command"]
    left_out = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert sorted(left_out) == sorted(
        f"model fast: {kind!r} tools are left out of what the model is offered (this server "
        "runs function tools only)" for kind in ("web_search", "file_search", "mcp"))


def test_a_namespaces_functions_are_offered_and_their_calls_carry_it(client, events_file):
    body = {"model": "fast", "input": "CALL now", "tools": [
        FUNCTION, {"type": "namespace", "name": "mcp__files", "description": "file tools",
                   "tools": [{"type": "function", "name": "read_file",
                              "parameters": {"type": "object"}}]}]}
    reply = client.post(client.v1 + "/responses", json=body)
    assert reply.status_code == 200, reply.text
    calls = {item["name"]: item for item in reply.json()["output"]
             if item["type"] == "function_call"}
    assert calls["read_file"]["namespace"] == "mcp__files"
    assert "namespace" not in calls["exec_command"]
    assert [t["function"]["name"] for t in received_last(events_file)["tools"]] == [
        "exec_command", "read_file"]


def received_last(events_file) -> dict:
    return [e for e in read_events(events_file) if e["event"] == "start"][-1]["request"]


@pytest.mark.parametrize(("thinking", "budget"), [
    ({"type": "enabled", "budget_tokens": 1024}, 1024),
    ({"type": "adaptive"}, None), ({"type": "disabled"}, None)])
def test_an_anthropic_thinking_budget_reaches_the_backend(client, events_file, thinking,
                                                          budget):
    reply = client.post(client.v1 + "/messages", json={
        "model": "fast", "messages": ASK, "max_tokens": 8, "thinking": thinking})
    assert reply.status_code == 200, reply.text
    assert received(events_file).get("thinking_budget") == budget
