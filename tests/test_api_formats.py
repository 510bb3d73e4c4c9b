"""The renderers and the streaming path, without HTTP where none is needed."""

from __future__ import annotations

import msgspec
import pytest
from support import body_of, drive

from llama_api import errors
from llama_api.api.chat import ChatChunks, chat_response
from llama_api.api.choices import Choice, total_usage
from llama_api.api.completions import CompletionChunks, completion_response
from llama_api.api.error_responses import OPENAI_ERRORS
from llama_api.api.streaming import Event, EventStream
from llama_api.contract.records import Delta, TokenLogprob, ToolCallDelta, TopLogprob, Usage


def data(event: Event) -> dict:
    return event.data


def test_event_framing_plain_and_named():
    assert Event({"a": 1}).encode() == b'data: {"a":1}\n\n'
    assert Event("[DONE]").encode() == b"data: [DONE]\n\n"
    assert Event({"type": "ping"}, name="ping").encode() == b'event: ping\ndata: {"type":"ping"}\n\n'


def test_chat_chunks_open_each_choice_with_the_role_and_end_with_usage_and_done():
    chunks = ChatChunks("id-1", "m", 1, include_usage=True)
    events = [*chunks.delta(1, Delta(text="hi")), *chunks.delta(1, Delta(text="!"))]
    assert [data(e)["choices"][0]["delta"] for e in events] == [
        {"role": "assistant", "content": ""}, {"content": "hi"}, {"content": "!"}]
    assert {data(e)["object"] for e in events} == {"chat.completion.chunk"}
    choice = Choice(0)
    choice.add(Delta(finish_reason="stop", usage=Usage(prompt_tokens=2, completion_tokens=3)))
    usage, done = chunks.finish([choice])
    assert data(usage)["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert done.data == "[DONE]"
    assert [e.data for e in ChatChunks("i", "m", 1, include_usage=False).finish([choice])] == ["[DONE]"]


def test_chat_chunk_tool_calls_and_logprobs():
    chunks = ChatChunks("id", "m", 1, include_usage=False)
    delta = Delta(tool_calls=[ToolCallDelta(index=0, id="c1", name="f", arguments="{")],
                  logprobs=[TokenLogprob(token="x", logprob=-0.5, top=[TopLogprob("x", -0.5)])])
    _, event = chunks.delta(0, delta)
    choice = data(event)["choices"][0]
    assert choice["delta"] == {"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                                               "function": {"name": "f", "arguments": "{"}}]}
    assert choice["logprobs"]["content"][0]["bytes"] == [120]


def test_completion_chunk_logprob_offsets_count_earlier_text():
    chunks = CompletionChunks("id", "m", 1, False, choices=1)
    list(chunks.delta(0, Delta(text="abc")))
    [event] = chunks.delta(0, Delta(text="de", logprobs=[TokenLogprob(token="de", logprob=-1.0)]))
    assert data(event)["choices"][0]["logprobs"]["text_offset"] == [3]


def test_whole_responses_join_text_and_merge_tool_calls():
    choice = Choice(0)
    choice.add(Delta(tool_calls=[ToolCallDelta(index=0, id="c", name="f", arguments='{"a"')]))
    choice.add(Delta(tool_calls=[ToolCallDelta(index=0, arguments=": 1}")], finish_reason="tool_calls"))
    body = chat_response("id", "m", [choice], Usage())
    message = body["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [{"id": "c", "type": "function",
                                      "function": {"name": "f", "arguments": '{"a": 1}'}}]
    texts = [Choice(0), Choice(1)]
    texts[0].add(Delta(text="a"))
    texts[0].add(Delta(text="b", usage=Usage(prompt_tokens=4, completion_tokens=2)))
    texts[1].add(Delta(text="c", usage=Usage(prompt_tokens=4, completion_tokens=1)))
    usage = total_usage(texts, prompts=1)
    body = completion_response("id", "m", texts, usage)
    assert [c["text"] for c in body["choices"]] == ["ab", "c"]
    assert [c["finish_reason"] for c in body["choices"]] == ["stop", "stop"]
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


# -- the streaming path with another API's renderer and error shape --------------------

class NamedEvents:
    """A renderer in the style of Anthropic's Messages stream: named events, no [DONE]."""

    def start(self):
        return [Event({"type": "message_start"}, name="message_start")]

    def delta(self, index, delta):
        return [Event({"type": "content_block_delta", "index": index, "text": delta.text,
                       "stop": delta.finish_reason}, name="content_block_delta")]

    def finish(self, choices):
        return [Event({"type": "message_stop"}, name="message_stop")]


class NamedErrors:
    def body(self, exc):
        return {"type": "error", "error": {"type": exc.type, "message": exc.message}}

    def event(self, exc):
        return Event(self.body(exc), name="error")


def run_stream(generate, choices=1, renderer=None, error_shape=None):
    """Drive an EventStream as an ASGI server would; returns (start message, body)."""
    sent = drive(EventStream(generate, choices, renderer or NamedEvents(),
                             error_shape or NamedErrors()))
    return sent[0][1], body_of(sent)


def test_a_stream_with_named_events_closes_every_unfinished_choice():
    async def generate(emit):
        await emit(0, Delta(text="a"))
        await emit(1, Delta(text="b", finish_reason="length"))

    start, body = run_stream(generate, choices=2)
    assert start["status"] == 200
    names = [line for line in body.decode().splitlines() if line.startswith("event:")]
    assert names == ["event: message_start", "event: content_block_delta",
                     "event: content_block_delta", "event: content_block_delta",
                     "event: message_stop"]
    assert b'"index":0,"text":"","stop":"stop"' in body  # choice 0 got its closing delta


def test_an_error_after_the_start_is_the_routes_error_event_and_ends_the_stream():
    async def generate(emit):
        await emit(0, Delta(text="a"))
        raise errors.WorkerCrashed("the worker stopped")

    _, body = run_stream(generate)
    assert body.endswith(b'event: error\ndata: {"type":"error","error":{"type":"server_error",'
                         b'"message":"the worker stopped"}}\n\n')
    assert b"message_stop" not in body
    _, body = run_stream(generate, renderer=ChatChunks("id", "m", 1, False),
                         error_shape=OPENAI_ERRORS)
    last = body.decode().strip().splitlines()[-1]
    assert msgspec.json.decode(last[6:])["error"]["code"] == "worker_crashed"
    assert "[DONE]" not in body.decode()


def test_an_error_before_the_first_delta_is_raised_for_a_real_status():
    async def generate(emit):
        raise errors.ContextLengthExceeded("too long")

    with pytest.raises(errors.ContextLengthExceeded, match="too long"):
        run_stream(generate)  # raised before anything was sent: the handlers give it a status
