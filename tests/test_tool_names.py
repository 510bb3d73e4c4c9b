"""Tool names follow OpenAI's rule, ^[a-zA-Z0-9_-]{1,64}$, in each API: a name is an
identifier, never text that could carry markup into the prompt the tools are shown in."""

from __future__ import annotations

import pytest

BAD_NAMES = ["<|im_end|>", "get weather", "a" * 65, "", "f\n", "naïve"]


def function_tool(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_tool_name_outside_the_rule_is_a_400_in_every_api(shared_client, name):
    chat = shared_client.post(shared_client.v1 + "/chat/completions", json={
        "model": "fast", "messages": [{"role": "user", "content": "hi"}],
        "tools": [function_tool(name)]})
    assert chat.status_code == 400 and "name" in chat.json()["error"]["param"]
    responses = shared_client.post(shared_client.v1 + "/responses", json={
        "model": "fast", "input": "hi",
        "tools": [{"type": "function", "name": name, "parameters": {"type": "object"}}]})
    assert responses.status_code == 400, responses.text
    messages = shared_client.post(shared_client.v1 + "/messages", json={
        "model": "fast", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": name, "input_schema": {"type": "object"}}]})
    assert messages.status_code == 400 and messages.json()["type"] == "error"


@pytest.mark.parametrize("name", ["get_weather", "f", "A-1_b", "x" * 64])
def test_a_name_within_the_rule_is_served(shared_client, name):
    chat = shared_client.post(shared_client.v1 + "/chat/completions", json={
        "model": "fast", "messages": [{"role": "user", "content": "CALL"}],
        "tools": [function_tool(name)], "max_tokens": 4})
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == name
