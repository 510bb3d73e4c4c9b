"""The Responses API's output: deltas become output items and `response.*` events.

`ResponseEvents` is the stream renderer of POST /v1/responses and, with its events thrown
away, the collector of the plain answer too, so both build the same response. Items come in
the order the model produces them; a new kind of output (reasoning, text, a tool call)
closes the item before it: `output_item.added`, its content events, `output_item.done`.
Every event carries its `sequence_number` and its type as the SSE event name.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from llama_api import errors
from llama_api.api.streaming import Event
from llama_api.contract.records import Delta, ToolCallDelta, Usage

# Where a text item keeps its text, and the event names of its deltas.
TEXT_PARTS = {"message": "output_text", "reasoning": "reasoning_text"}


def openai_id(prefix: str) -> str:
    """An id in OpenAI's Responses style: `resp_...`, `msg_...`, `fc_...`."""
    return f"{prefix}_{uuid.uuid4().hex}"


def text_part(kind: str, text: str = "") -> dict[str, Any]:
    part = {"type": TEXT_PARTS[kind], "text": text}
    if kind == "message":
        part["annotations"] = []
    return part


def usage_object(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def error_code(exc: errors.LlamaApiError) -> str:
    """The `response.error.code` closest to what went wrong."""
    if exc.status == 429:
        return "rate_limit_exceeded"
    return "invalid_prompt" if 400 <= exc.status < 500 else "server_error"


class ResponseEvents:
    """Output items and events of one response. `echoed`: the response object's fields that
    repeat the request (model, tools, text, ...); `keep(response)` stores the finished one
    (it may raise `StoreUnavailable`); `namespaces`: the namespace of each function offered
    in one, which its calls carry."""

    def __init__(self, echoed: dict[str, Any], *, parallel_tool_calls: bool = True,
                 keep: Callable[[dict[str, Any]], None] | None = None,
                 namespaces: dict[str, str] | None = None):
        self.id = openai_id("resp")
        self.created_at = int(time.time())
        self.echoed = echoed
        self.parallel_tool_calls = parallel_tool_calls
        self.keep = keep
        self.namespaces = namespaces or {}
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the item being generated
        self.calls: dict[int, dict[str, Any]] = {}  # tool call index -> its item
        self.finish_reason: str | None = None
        self.usage = Usage()
        self.sequence = 0

    # -- the response object -------------------------------------------------------------

    def response(self, status: str, **fields: Any) -> dict[str, Any]:
        return {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "status": status, "error": None, "incomplete_details": None,
            **self.echoed,
            "output": copy.deepcopy(self.output), "usage": None, **fields,
        }

    def complete(self) -> dict[str, Any]:
        """The finished response (handed to `keep`); call once every delta is in."""
        for _ in self._close():
            pass
        fields: dict[str, Any] = {"usage": usage_object(self.usage),
                                  "completed_at": int(time.time())}
        if self.finish_reason == "length":
            status = "incomplete"
            fields["incomplete_details"] = {"reason": "max_output_tokens"}
        else:
            status = "completed"
        response = self.response(status, **fields)
        if self.keep is not None:
            self.keep(response)
        return response

    # -- StreamRenderer -------------------------------------------------------------------

    def event(self, type_: str, **fields: Any) -> Event:
        data = {"type": type_, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return Event(data, name=type_)

    def start(self) -> Iterator[Event]:
        yield self.event("response.created", response=self.response("in_progress"))
        yield self.event("response.in_progress", response=self.response("in_progress"))

    def delta(self, index: int, delta: Delta) -> Iterator[Event]:
        if delta.reasoning:
            yield from self._text("reasoning", delta.reasoning)
        if delta.text:
            yield from self._text("message", delta.text)
        for call in delta.tool_calls or []:
            yield from self._call(call)
        if delta.finish_reason:
            self.finish_reason = delta.finish_reason
        if delta.usage is not None:
            self.usage = delta.usage

    def finish(self, choices) -> Iterator[Event]:
        closing = list(self._close())
        try:
            response = self.complete()
        except errors.LlamaApiError as exc:  # the store failed: the answer can't be kept
            yield from closing
            yield self.failed(exc)
            return
        yield from closing
        yield self.event(f"response.{response['status']}", response=response)

    def failed(self, exc: errors.LlamaApiError) -> Event:
        """`response.failed`, with what was generated before the error."""
        if self.open is not None:  # cut short; only this one event goes out
            self.open["status"], self.open = "incomplete", None
        error = {"code": error_code(exc), "message": exc.message}
        return self.event("response.failed", response=self.response("failed", error=error))

    # -- items ----------------------------------------------------------------------------

    def _add(self, item: dict[str, Any]) -> Iterator[Event]:
        yield from self._close()
        self.open = item
        self.output.append(item)
        yield self.event("response.output_item.added", output_index=len(self.output) - 1,
                         item=copy.deepcopy(item))

    def _text(self, kind: str, text: str) -> Iterator[Event]:
        if self.open is None or self.open["type"] != kind:
            prefix = "msg" if kind == "message" else "rs"
            item = {"id": openai_id(prefix), "type": kind, "status": "in_progress",
                    "content": []}
            if kind == "message":
                item["role"] = "assistant"
            else:
                item["summary"] = []
            yield from self._add(item)
            item["content"].append(text_part(kind))
            yield self.event("response.content_part.added", **self._where(), content_index=0,
                             part=text_part(kind))
        self.open["content"][0]["text"] += text
        extra = {"logprobs": []} if kind == "message" else {}
        yield self.event(f"response.{TEXT_PARTS[kind]}.delta", **self._where(), content_index=0,
                         delta=text, **extra)

    def _call(self, call: ToolCallDelta) -> Iterator[Event]:
        item = self.calls.get(call.index)
        if item is None:
            if self.calls and not self.parallel_tool_calls:
                return  # parallel_tool_calls: false keeps the first call only
            item = {"id": openai_id("fc"), "type": "function_call", "status": "in_progress",
                    "call_id": call.id or openai_id("call"), "name": call.name or "",
                    "arguments": ""}
            if item["name"] in self.namespaces:
                item["namespace"] = self.namespaces[item["name"]]
            self.calls[call.index] = item
            yield from self._add(item)
        elif call.name:
            item["name"] += call.name
        if call.arguments:
            item["arguments"] += call.arguments
            yield self.event("response.function_call_arguments.delta",
                             item_id=item["id"], output_index=self.output.index(item),
                             delta=call.arguments)

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.open["id"], "output_index": len(self.output) - 1}

    def _close(self) -> Iterator[Event]:
        """End the open item with its done events; cut short if the output hit its limit."""
        item, self.open = self.open, None
        if item is None:
            return
        item["status"] = "incomplete" if self.finish_reason == "length" else "completed"
        where = {"item_id": item["id"], "output_index": self.output.index(item)}
        if item["type"] == "function_call":
            yield self.event("response.function_call_arguments.done", **where,
                             name=item["name"], arguments=item["arguments"])
        else:
            part = item["content"][0]
            extra = {"logprobs": []} if item["type"] == "message" else {}
            yield self.event(f"response.{part['type']}.done", **where, content_index=0,
                             text=part["text"], **extra)
            yield self.event("response.content_part.done", **where, content_index=0,
                             part=copy.deepcopy(part))
        yield self.event("response.output_item.done", output_index=where["output_index"],
                         item=copy.deepcopy(item))
