"""The real coding agents against a real server on the echo backend: Claude Code (`claude -p`,
the Messages API) and Codex (`codex exec`, the Responses API), each with its default settings
apart from the server's address, a dummy key and the model. Each completes a turn and exits 0;
when the model calls tools, the agent runs them and sends their results back.

A recording proxy in front of the server shows what each agent sent. The echo model `agent`
reads prompts of any length (an agent's system prompt has thousands of words) and says its
prompt's words once (ONCE), so an answer holds the user's words; CALL makes it call every tool
offered, once."""

from __future__ import annotations

import pytest
from node_clients import (
    AGENT,
    claude_command,
    claude_env,
    codex_command,
    codex_env,
    recording_proxy,
    require_node_clients,
    run_client,
)
from support import echo_server, sse

TIMEOUT = 120  # seconds a CLI may take for its turn (it takes a few on echo)
ASKED = "then say pelican ONCE"


@pytest.fixture(scope="module")
def agent_server(tmp_path_factory):
    """A server on the echo model `agent` (AGENT: room for an agent's long prompts)."""
    require_node_clients()
    folder = tmp_path_factory.mktemp("agents")
    with echo_server(folder / "models", models={"agent": AGENT},
                     events=folder / "events.jsonl") as running:
        yield running


@pytest.fixture
def proxy(agent_server):
    with recording_proxy(agent_server.url) as recording:
        yield recording


def served(proxy, route: str) -> list:
    """The agent's requests to `route`, each of which the server answered with 200; a
    refusal fails the test showing the server's answer."""
    posts = proxy.posts(route)
    assert posts, f"no request reached {route}: {[r.path for r in proxy.requests]}"
    refused = [f"{r.status}: {r.answer[:600].decode(errors='replace')}"
               for r in posts if r.status != 200]
    assert not refused, "the server refused the agent's request:\n" + "\n".join(refused)
    return posts


# Claude Code

def test_claude_code_prints_the_models_answer_and_exits_0(agent_server, proxy, tmp_path):
    finished = run_client(claude_command(f"Say hello, {ASKED}"),
                          claude_env(proxy.url, "agent", tmp_path / "home"), tmp_path, TIMEOUT)
    posts = served(proxy, "/v1/messages")
    assert finished.returncode == 0, str(finished)
    assert f"Say hello, {ASKED}" in finished.stdout  # the echo model's answer, printed
    assert {r.body["model"] for r in posts} == {"agent"}


def test_claude_code_runs_the_called_tools_and_sends_their_results_back(
        agent_server, proxy, tmp_path):
    finished = run_client(claude_command(f"CALL your tools, {ASKED}"),
                          claude_env(proxy.url, "agent", tmp_path / "home"), tmp_path, TIMEOUT)
    posts = served(proxy, "/v1/messages")
    first = posts[0]
    offered = {tool["name"] for tool in first.body["tools"]}
    uses = [event["content_block"] for _, event in sse(first.answer)
            if event.get("type") == "content_block_start"
            and event["content_block"]["type"] == "tool_use"]
    assert {use["name"] for use in uses} == offered  # echo calls each tool once
    # the next request holds the calls and a tool_result for each (Claude Code's tools refuse
    # echo's arguments, {"words": N}, so the results are errors: the round trip is the point)
    followed = posts[1].body["messages"]
    called = {block["id"] for message in followed if message["role"] == "assistant"
              for block in message["content"] if block["type"] == "tool_use"}
    results = {block["tool_use_id"] for message in followed if message["role"] == "user"
               and isinstance(message["content"], list)
               for block in message["content"] if block["type"] == "tool_result"}
    assert called == results == {use["id"] for use in uses}
    assert finished.returncode == 0, str(finished)
    assert f"CALL your tools, {ASKED}" in finished.stdout  # the answer after the results


# Codex

def test_codex_exec_prints_the_models_answer_and_exits_0(agent_server, proxy, tmp_path):
    finished = run_client(codex_command(f"Say hello, {ASKED}"),
                          codex_env(proxy.url, "agent", tmp_path / "home"), tmp_path, TIMEOUT)
    posts = served(proxy, "/v1/responses")
    assert finished.returncode == 0, str(finished)
    assert f"Say hello, {ASKED}" in finished.stdout  # the final message goes to stdout
    assert {r.body["model"] for r in posts} == {"agent"}


def function_names(tools: list[dict]) -> set[tuple[str | None, str]]:
    """(namespace, name) of every function a request offers, namespaces' members included."""
    names = set()
    for tool in tools:
        if tool["type"] == "function":
            names.add((None, tool["name"]))
        elif tool["type"] == "namespace":
            names |= {(tool["name"], member["name"]) for member in tool["tools"]}
    return names


def test_codex_exec_runs_the_called_tools_and_sends_their_outputs_back(
        agent_server, proxy, tmp_path):
    finished = run_client(codex_command(f"CALL your tools, {ASKED}"),
                          codex_env(proxy.url, "agent", tmp_path / "home"), tmp_path, TIMEOUT)
    posts = served(proxy, "/v1/responses")
    first = posts[0]
    calls = [event["item"] for _, event in sse(first.answer)
             if event.get("type") == "response.output_item.done"
             and event["item"]["type"] == "function_call"]
    # every function is called, a namespace's members with their namespace
    assert {(call.get("namespace"), call["name"]) for call in calls} == function_names(
        first.body["tools"])
    followed = posts[1].body["input"]
    sent_back = {item["call_id"] for item in followed if item["type"] == "function_call"}
    outputs = {item["call_id"] for item in followed if item["type"] == "function_call_output"}
    assert sent_back == outputs == {call["call_id"] for call in calls}
    assert finished.returncode == 0, str(finished)
    assert f"CALL your tools, {ASKED}" in finished.stdout
