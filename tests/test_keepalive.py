"""SSE keep-alive: a stream with nothing to send (a load, a queue, a long prompt) sends
comment lines, and the status is chosen by the first delta only up to one interval."""

from __future__ import annotations

import json

import anyio
import msgspec
import openai
import pytest
from support import USER, body_of, drive, sse_blocks

from llama_api import errors
from llama_api.api.chat import ChatChunks
from llama_api.api.error_responses import OPENAI_ERRORS
from llama_api.api.streaming import KEEPALIVE_COMMENT, EventStream
from llama_api.contract.records import Delta

COMMENT = KEEPALIVE_COMMENT.decode().strip()


def run_stream(generate, keepalive: float):
    """Drive an EventStream as an ASGI server would: (status, body, seconds until the status
    was sent)."""
    sent = drive(EventStream(generate, 1, ChatChunks("id", "m", 1, False), OPENAI_ERRORS,
                             keepalive=keepalive))
    answered_at, status = sent[0]
    assert status["type"] == "http.response.start"
    return status["status"], body_of(sent), answered_at


def test_a_quiet_start_commits_to_200_after_one_interval_then_sends_comments():
    async def generate(emit):
        await anyio.sleep(2.25)  # a load
        await emit(0, Delta(text="hi"))
        await emit(0, Delta(finish_reason="stop"))

    # Wide margins: a host stalled for a few hundred ms still sees comments at 0.5, 1, 1.5 s.
    status, body, answered_at = run_stream(generate, keepalive=0.5)
    assert status == 200
    assert 0.45 <= answered_at < 1.5  # after one interval, long before the first delta
    events = sse_blocks(body)
    first_data = next(i for i, event in enumerate(events) if event.startswith("data: "))
    assert first_data >= 3 and set(events[:first_data]) == {COMMENT}
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[first_data][6:])["choices"][0]["delta"]["content"] == ""  # the role


def test_a_quiet_gap_mid_stream_gets_comments_too():
    async def generate(emit):
        await emit(0, Delta(text="a"))
        await anyio.sleep(3.0)  # a long pause between tokens
        await emit(0, Delta(text="b", finish_reason="stop"))

    status, body, answered_at = run_stream(generate, keepalive=1.0)
    assert status == 200 and answered_at < 0.5  # the first delta came at once, not after 1 s
    events = sse_blocks(body)
    texts = [i for i, event in enumerate(events) if '"content":"a"' in event or
             '"content":"b"' in event]
    assert len(texts) == 2 and COMMENT in events[texts[0]:texts[1]]


def test_an_error_after_the_interval_is_the_routes_error_event_in_a_200():
    async def generate(emit):
        await anyio.sleep(1.5)
        raise errors.ModelLoadError("the weights are corrupt")

    status, body, _ = run_stream(generate, keepalive=0.5)
    assert status == 200
    events = sse_blocks(body)
    assert events[0] == COMMENT
    error = msgspec.json.decode(events[-1][6:])["error"]
    assert error["code"] == "model_load_failed" and "corrupt" in error["message"]
    assert "data: [DONE]" not in events


def test_an_error_within_the_interval_still_gets_a_real_status():
    async def generate(emit):
        await anyio.sleep(0.05)
        raise errors.ModelLoadError("the weights are corrupt")

    with pytest.raises(errors.ModelLoadError):
        run_stream(generate, keepalive=5.0)


def test_keepalive_0_waits_for_the_first_delta_and_sends_no_comment():
    async def generate(emit):
        await anyio.sleep(0.3)
        await emit(0, Delta(text="hi", finish_reason="stop"))

    status, body, answered_at = run_stream(generate, keepalive=0)
    assert status == 200 and answered_at >= 0.29
    assert COMMENT not in sse_blocks(body)


# -- through the app, with real workers -----------------------------------------------

@pytest.fixture
def keepalive_app(models_dir, start_app):
    (models_dir / "sleepy.echo").write_text(json.dumps({"load_delay": 1.2}))
    (models_dir / "pondering.echo").write_text(json.dumps({"stall": 1.0, "stall_after": 0}))
    with start_app(keepalive=0.25) as client:
        yield client


def test_a_slow_load_streams_comments_then_the_normal_stream(keepalive_app):
    client = keepalive_app
    with client.stream("POST", "/v1/chat/completions", json={
            "model": "sleepy", "messages": USER, "max_tokens": 4, "stream": True}) as response:
        assert response.status_code == 200
        events = sse_blocks(response.read())
    first_data = next(i for i, event in enumerate(events) if event.startswith("data: "))
    assert first_data >= 2 and set(events[:first_data]) == {COMMENT}
    text = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content", "")
                   for e in events[first_data:-1] if json.loads(e[6:])["choices"])
    assert text == "tick tock tick tock" and events[-1] == "data: [DONE]"

    # The openai client reads through the comments (a stall before the first token).
    api = openai.OpenAI(base_url=client.v1, api_key="unused", http_client=client, max_retries=0)
    stream = api.chat.completions.create(model="pondering", messages=USER, max_tokens=3,
                                         stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == \
        "tick tock tick"


def test_an_anthropic_stream_keeps_its_named_events_around_the_comments(keepalive_app):
    response = keepalive_app.post("/v1/messages", json={
        "model": "pondering", "max_tokens": 3, "stream": True, "messages": USER})
    assert response.status_code == 200
    events = sse_blocks(response.content)
    assert events[0].startswith("event: message_start") and COMMENT in events
    assert events[-1].startswith("event: message_stop")


def test_a_load_failure_within_the_interval_is_still_a_503(start_app):
    with start_app(keepalive=30) as client:
        response = client.post("/v1/chat/completions", json={
            "model": "broken", "messages": USER, "stream": True})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_load_failed"


def test_a_client_with_a_short_read_timeout_survives_a_long_load_over_real_http(models_dir,
                                                                               start_server):
    import httpx

    (models_dir / "sleepy.echo").write_text(json.dumps({"load_delay": 6}))
    with start_server("--keepalive", "0.5") as server:
        # Without the comments, this client gives up after 2.5 s of silence (httpx.ReadTimeout),
        # long before the 6 s load ends; a comment every 0.5 s leaves it 2 s of slack.
        timeout = httpx.Timeout(30, read=2.5)
        with httpx.stream("POST", server.v1 + "/chat/completions", timeout=timeout, json={
                "model": "sleepy", "messages": USER, "max_tokens": 2, "stream": True}) as response:
            assert response.status_code == 200
            lines = [line for line in response.iter_lines() if line]
    assert lines.count(COMMENT) >= 5
    assert lines[-1] == "data: [DONE]"
