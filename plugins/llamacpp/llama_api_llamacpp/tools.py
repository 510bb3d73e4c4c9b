"""Tool calls in generated text: the stream parser and the deltas it sends."""

from __future__ import annotations

import json
import uuid

from llama_api.contract.records import Delta, ToolCallDelta
from llama_api.text.stops import StopHoldback

TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"


def call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def parse_tool_calls(text: str, tool_names: set[str]) -> list[dict] | None:
    """Tool calls in generated text (`<tool_call>{...}</tool_call>` blocks, one bare JSON
    object, or a JSON array of them), as [{"name", "arguments" (a JSON object, as a
    string)}]; None when the text is not a call."""
    stripped = text.strip()
    blobs = []
    if TOOL_OPEN in stripped:
        for chunk in stripped.split(TOOL_OPEN)[1:]:
            blobs.append(chunk.split(TOOL_CLOSE)[0].strip())
    elif stripped.startswith(("{", "[")):
        blobs.append(stripped)
    else:
        return None
    objects = []
    decoder = json.JSONDecoder()
    for blob in blobs:
        try:
            obj, _ = decoder.raw_decode(blob)
        except ValueError:
            return None
        # a list of calls ([TOOL_CALLS] [...] in Mistral's format)
        objects.extend(obj if isinstance(obj, list) else [obj])
    calls = []
    for obj in objects:
        if isinstance(obj, dict) and isinstance(obj.get("function"), dict):
            obj = obj["function"]  # OpenAI's own shape
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return None
        if tool_names and obj["name"] not in tool_names:
            return None
        arguments = _arguments(obj.get("arguments", obj.get("parameters")))
        if arguments is None:
            return None
        calls.append({"name": obj["name"], "arguments": arguments})
    return calls or None


def _arguments(args) -> str | None:
    """A call's arguments as a JSON object string (clients json.loads them), or None
    when they are not an object."""
    if args is None:
        return "{}"
    if isinstance(args, str):  # arguments already encoded: they must decode
        try:
            args = json.loads(args)
        except ValueError:
            return None
    return json.dumps(args, ensure_ascii=False) if isinstance(args, dict) else None


def tool_deltas(run, mode: str, forced: str | None, names: set[str], parallel: bool = True):
    """Deltas of a run whose answer may be a tool call (`run` yields Deltas).

    `mode` "function": the grammar makes the output the arguments of `forced`, streamed
    as they come; "required": the grammar makes it a call (an array of calls when
    `parallel`), each sent once complete; "auto": text streams, but what may be a call is
    held back until it is decided. Several calls are sent with indices 0, 1, 2...;
    without `parallel` only the first one counts.
    """
    if mode == "function":
        yield Delta(tool_calls=[ToolCallDelta(index=0, id=call_id(), name=forced)])
        for delta in run:
            if delta.text:
                yield Delta(tool_calls=[ToolCallDelta(index=0, arguments=delta.text)])
        yield run.final("tool_calls" if run.finish == "stop" else run.finish)
        return
    if mode == "required":
        for _ in run:
            pass
        calls = parse_tool_calls(run.text, names)
        if calls is None:  # only when cut short (max_tokens)
            yield Delta(text=run.text)
            yield run.final()
            return
        yield from _call_deltas(calls if parallel else calls[:1])
        yield run.final("tool_calls")
        return
    parser = AutoToolCalls(names)
    for delta in run:
        send = parser.feed(delta.text)
        if send or delta.reasoning:  # a thinking model's reasoning passes through
            yield Delta(reasoning=delta.reasoning, text=send)
    calls, rest = parser.finish()
    if calls:
        yield from _call_deltas(calls if parallel else calls[:1])
        yield run.final("tool_calls")
        return
    if rest:
        yield Delta(text=rest)
    yield run.final()


class AutoToolCalls:
    """Text that streams unless it turns into a tool call: an answer starting with "{" or
    "[" (a bare JSON call), or a `<tool_call>` marker anywhere (text before it streams).

    Until the answer has said something other than space, its space is held: if a call
    follows, the space belongs to it (the answer is only the call), however the text is cut.
    """

    def __init__(self, names: set[str]):
        self.names = names
        self.marker = StopHoldback([TOOL_OPEN])
        self.call_text: str | None = None  # from the start of what may be a call
        self.start = ""  # leading text until its first non-space character decides
        self.space = ""  # leading space held while nothing else has been sent
        self.spoke = False  # text other than space has been sent

    def feed(self, text: str) -> str:
        if self.call_text is not None:
            self.call_text += text
            return ""
        if self.start is not None:
            self.start += text
            probe = self.start.lstrip()
            if not probe:
                return ""
            if probe[0] in "{[":
                self.call_text, self.start = self.start, None
                return ""
            text, self.start = self.start, None
        buffered = self.marker.held + text
        before = self.marker.feed(text)
        send = before
        if not self.spoke:
            send, self.space = self.space + before, ""
            if not send.strip():
                send, self.space = "", send
            else:
                self.spoke = True
        if self.marker.stopped:  # what follows the marker is a call, or text after all
            self.call_text = self.space + buffered[len(before):]
            self.space = ""
        return send

    def finish(self) -> tuple[list[dict] | None, str]:
        """(the calls, None) or (None, the text still held back)."""
        if self.call_text is not None:
            calls = parse_tool_calls(self.call_text, self.names)
            if calls:
                return calls, ""
            return None, self.call_text
        return None, (self.start or "") + self.space + self.marker.flush()


def _call_deltas(calls):
    for i, call in enumerate(calls):
        yield Delta(tool_calls=[ToolCallDelta(
            index=i, id=call_id(), name=call["name"], arguments=call["arguments"])])
