"""The Responses renderer and its error shape on the streaming path, without HTTP."""

from __future__ import annotations

from support import body_of, drive, sse

from llama_api import errors
from llama_api.api.responses import ResponseErrors
from llama_api.api.responses_output import ResponseEvents
from llama_api.api.responses_store import StoreUnavailable
from llama_api.api.streaming import EventStream
from llama_api.contract.records import Delta, ToolCallDelta, Usage


def stream_body(generate, events: ResponseEvents) -> list[dict]:
    """Drive an EventStream as an ASGI server would; the events' data, in order."""
    sent = drive(EventStream(generate, 1, events, ResponseErrors(events)))
    return [data for _, data in sse(body_of(sent))]


def test_a_new_kind_of_output_closes_the_item_before_it():
    events = ResponseEvents({"model": "m"})
    deltas = [Delta(reasoning="think"), Delta(text="say"),
              Delta(tool_calls=[ToolCallDelta(index=0, id="c0", name="f", arguments="{}")]),
              Delta(text="more", finish_reason="stop", usage=Usage(prompt_tokens=1,
                                                                   completion_tokens=4))]
    types = [e.data["type"] for d in deltas for e in events.delta(0, d)]
    types += [e.data["type"] for e in events.finish([])]
    assert types == [
        "response.output_item.added", "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed"]
    response = events.complete()
    assert [item["type"] for item in response["output"]] == [
        "reasoning", "message", "function_call", "message"]
    assert response["usage"]["total_tokens"] == 5


def test_an_error_mid_stream_is_response_failed_with_what_was_made():
    async def generate(emit):
        await emit(0, Delta(text="half"))
        raise errors.WorkerCrashed("the worker stopped")

    events = stream_body(generate, ResponseEvents({"model": "m"}))
    assert [e["type"] for e in events][:2] == ["response.created", "response.in_progress"]
    failed = events[-1]
    assert failed["type"] == "response.failed"
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {"code": "server_error",
                                           "message": "the worker stopped"}
    assert failed["response"]["output"][0]["content"][0]["text"] == "half"
    assert failed["response"]["output"][0]["status"] == "incomplete"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_a_store_that_fails_at_the_end_fails_the_response_instead_of_completing_it():
    def keep(response):
        raise StoreUnavailable("The responses store /x/responses.sqlite3 is unavailable: "
                               "disk I/O error.")

    async def generate(emit):
        await emit(0, Delta(text="done", finish_reason="stop"))

    events = stream_body(generate, ResponseEvents({"model": "m"}, keep=keep))
    assert "response.completed" not in [e["type"] for e in events]
    assert events[-2]["type"] == "response.output_item.done"
    assert events[-1]["type"] == "response.failed"
    assert "/x/responses.sqlite3" in events[-1]["response"]["error"]["message"]


def test_a_stream_without_a_finish_reason_completes():
    async def generate(emit):
        await emit(0, Delta(text="a"))

    events = stream_body(generate, ResponseEvents({"model": "m"}))
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["output"][0]["status"] == "completed"
