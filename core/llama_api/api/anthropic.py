"""POST /v1/messages (Anthropic's Messages API): the request to a normalized GenerateRequest,
the choice to a message or to Anthropic's stream of named events, errors in Anthropic's shape.

How Anthropic's turns become the core's chat messages:
- `system` (a string or text blocks) is a leading system message, and a `system` turn inside
  `messages` a system message in its place (a model whose chat template refuses that answers
  400, naming the template's reason);
- text blocks of one turn are joined with a blank line between them;
- an assistant's `tool_use` blocks become its `tool_calls` (arguments as JSON text);
- a user's `tool_result` blocks become `tool` messages, before the turn's text, as chat
  templates expect them right after the assistant's calls; `is_error` prefixes "Error: ";
- `thinking` blocks of earlier turns are left out, as Anthropic leaves them out of context;
- image blocks (base64 or url sources) stand where they are as image markers
  (`llama_api.api.images`); documents, and images inside tool results, are refused (400).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from llama_api import errors
from llama_api.api.choices import Choice, new_id
from llama_api.api.images import place
from llama_api.api.schemas.anthropic import (
    DocumentBlock,
    ImageBlock,
    Message,
    MessagesInput,
    MessagesRequest,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingBlock,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
)
from llama_api.api.streaming import Event
from llama_api.contract.records import (
    Delta,
    GenerateRequest,
    TokenizeRequest,
    TokenizeResult,
    ToolChoice,
)
from llama_api.errors import BadRequest, NotSupported

BLOCK_SEPARATOR = "\n\n"


def message_request(body: MessagesRequest) -> GenerateRequest:
    tools, tool_choice, tool_name = tool_fields(body)
    one_call = bool(body.tool_choice and body.tool_choice.disable_parallel_tool_use)
    images: list = []  # ImageSources until routes' `images.prepare`
    return GenerateRequest(
        messages=conversation(body, images),
        images=images,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        stop=[s for s in body.stop_sequences or [] if s],
        tools=tools,
        tool_choice=tool_choice,
        tool_name=tool_name,
        parallel_tool_calls=not one_call,
        think=None if body.thinking is None else body.thinking.type != "disabled",
        thinking_budget=(body.thinking.budget_tokens
                         if body.thinking and body.thinking.type == "enabled" else None),
    )


def conversation(body: MessagesInput, images: list | None = None) -> list[dict[str, Any]]:
    """The request's turns as the core's chat messages (see the module docstring); image
    blocks are kept in `images` (None: a list of its own, for a caller that reads text)."""
    images = [] if images is None else images
    messages = []
    if body.system:
        system = (body.system if isinstance(body.system, str)
                  else BLOCK_SEPARATOR.join(block.text for block in body.system))
        messages.append({"role": "system", "content": system})
    for i, message in enumerate(body.messages):
        messages.extend(turn_messages(i, message, images))
    return messages


def refuse_media(block, where: str) -> None:
    if isinstance(block, (ImageBlock, DocumentBlock)):
        kind = "image" if isinstance(block, ImageBlock) else "document"
        raise NotSupported(f"`{where}` is an {kind} block; only text, tool_use, tool_result "
                           "and thinking blocks are supported.", param=where)


def image_marker(block: ImageBlock, where: str, images: list) -> str:
    source = block.source or {}
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        return place(images, where, data=source["data"], media_type=source.get("media_type"))
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return place(images, where, url=source["url"])
    raise BadRequest(f"`{where}.source` must be a base64 or url image source.",
                     param=f"{where}.source")


def turn_messages(i: int, message: Message, images: list) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, block in enumerate(message.content):
        where = f"messages[{i}].content[{j}]"
        if isinstance(block, ImageBlock):
            texts.append(image_marker(block, where, images))
            continue
        refuse_media(block, where)
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            if message.role != "assistant":
                raise BadRequest(f"`{where}`: tool_use blocks belong in assistant turns.",
                                 param=where)
            calls.append({"id": block.id, "type": "function",
                          "function": {"name": block.name, "arguments": json.dumps(block.input)}})
        elif isinstance(block, ToolResultBlock):
            if message.role != "user":
                raise BadRequest(f"`{where}`: tool_result blocks belong in user turns.",
                                 param=where)
            results.append({"role": "tool", "tool_call_id": block.tool_use_id,
                            "content": tool_result_text(block, where)})
        else:  # thinking of an earlier turn: not part of the context
            assert isinstance(block, (ThinkingBlock, RedactedThinkingBlock))
    text = BLOCK_SEPARATOR.join(texts)
    if message.role == "system":  # tool blocks were refused above: text only
        return [{"role": "system", "content": text}]
    if message.role == "assistant":
        turn: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            turn["tool_calls"] = calls
        return [turn]
    return results + ([{"role": "user", "content": text}] if texts or not results else [])


def tool_result_text(block: ToolResultBlock, where: str) -> str:
    content = block.content
    if isinstance(content, list):
        for k, part in enumerate(content):
            refuse_media(part, f"{where}.content[{k}]")
        content = BLOCK_SEPARATOR.join(part.text for part in content)
    text = content or ""
    return f"Error: {text}" if block.is_error else text


def tool_fields(body: MessagesInput
                ) -> tuple[list[dict[str, Any]] | None, ToolChoice | None, str | None]:
    """tools, tool_choice and the forced tool's name, as the core has them."""
    choice = body.tool_choice
    if not body.tools:
        if isinstance(choice, (ToolChoiceAny, ToolChoiceTool)):
            raise BadRequest("`tool_choice` asks for a tool call but no tools were given.",
                             param="tool_choice")
        return None, None, None
    tools = []
    for i, tool in enumerate(body.tools):
        if tool.type not in (None, "custom"):
            raise NotSupported(f"`tools[{i}]` is Anthropic's built-in tool {tool.type!r}; only "
                               "client tools (name, description, input_schema) are supported.",
                               param=f"tools[{i}]")
        function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
        if tool.description is not None:
            function["description"] = tool.description
        tools.append({"type": "function", "function": function})
    if isinstance(choice, ToolChoiceTool):
        names = [tool.name for tool in body.tools]
        if choice.name not in names:
            raise BadRequest(f"`tool_choice.name` is {choice.name!r}, which is not among the "
                             f"tools ({', '.join(names)}).", param="tool_choice.name")
        return tools, "function", choice.name
    if isinstance(choice, ToolChoiceAny):
        return tools, "required", None
    if isinstance(choice, ToolChoiceNone):
        return tools, "none", None
    return tools, "auto", None


def count_tokens_request(body: MessagesInput) -> TokenizeRequest:
    """What the model reads for these turns and tools: its chat template, generation prompt
    and special tokens included, so the count is the message's `input_tokens`."""
    tools, _, _ = tool_fields(body)
    images: list = []  # ImageSources until the route's `images.prepare`
    return TokenizeRequest(messages=conversation(body, images), tools=tools, images=images)


def count_tokens_response(result: TokenizeResult) -> dict[str, int]:
    return {"input_tokens": len(result.tokens)}


# -- the answer -----------------------------------------------------------------------

def stop_reason(choice: Choice, stop_sequence: str | None) -> str:
    if choice.tool_calls or choice.finish_reason == "tool_calls":
        return "tool_use"
    if choice.finish_reason == "length":
        return "max_tokens"
    return "stop_sequence" if stop_sequence else "end_turn"


def tool_input(call: dict[str, Any]) -> dict[str, Any]:
    """A tool call's arguments as the object Anthropic's `input` is."""
    arguments = call["function"]["arguments"] or "{}"
    try:
        parsed = json.loads(arguments)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):  # the model's fault, not the client's nor a server bug
        raise errors.BackendUnavailable(
            f"The model called tool {call['function']['name']!r} with arguments that are not "
            f"a JSON object: {arguments[:200]!r}", code="invalid_tool_arguments")
    return parsed


def usage_dict(choice: Choice) -> dict[str, int]:
    return {"input_tokens": choice.usage.prompt_tokens,
            "output_tokens": choice.usage.completion_tokens}


def message_response(message_id: str, model: str, choice: Choice) -> dict[str, Any]:
    stop_sequence = choice.stop_sequence
    content: list[dict[str, Any]] = []
    if choice.reasoning:
        content.append({"type": "thinking", "thinking": "".join(choice.reasoning),
                        "signature": ""})
    text = "".join(choice.text)
    if text or not choice.tool_calls:
        content.append({"type": "text", "text": text})
    for index in sorted(choice.tool_calls):
        call = choice.tool_calls[index]
        content.append({"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
                        "input": tool_input(call)})
    reason = stop_reason(choice, stop_sequence)
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": stop_sequence if reason == "stop_sequence" else None,
        "usage": usage_dict(choice),
    }


def named(data: dict[str, Any]) -> Event:
    return Event(data, name=data["type"])


class MessageEvents:
    """Anthropic's stream: message_start, ping, then content blocks (each opened, fed with
    deltas, closed; a new kind of piece closes the open block), message_delta with the stop
    reason and usage, message_stop. Input tokens are known only at the end, so message_start
    says 0 and message_delta carries the real count (the SDK takes it from there)."""

    def __init__(self, message_id: str, model: str):
        self.message_id = message_id
        self.model = model
        self.open: str | tuple[str, int] | None = None  # "thinking", "text" or ("tool", index)
        self.blocks = 0  # blocks started so far: the next block's index
        self.stop_sequence: str | None = None

    def start(self) -> list[Event]:
        message = {"id": self.message_id, "type": "message", "role": "assistant",
                   "model": self.model, "content": [], "stop_reason": None,
                   "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
        return [named({"type": "message_start", "message": message}), named({"type": "ping"})]

    def _switch(self, key: str | tuple[str, int], block: dict[str, Any]) -> Iterator[Event]:
        if self.open == key:
            return
        yield from self._close()
        self.open = key
        yield named({"type": "content_block_start", "index": self.blocks, "content_block": block})
        self.blocks += 1

    def _close(self) -> Iterator[Event]:
        if self.open is not None:
            self.open = None
            yield named({"type": "content_block_stop", "index": self.blocks - 1})

    def _delta(self, delta: dict[str, Any]) -> Event:
        return named({"type": "content_block_delta", "index": self.blocks - 1, "delta": delta})

    def delta(self, index: int, delta: Delta) -> Iterator[Event]:
        if delta.reasoning:
            yield from self._switch("thinking", {"type": "thinking", "thinking": "",
                                                 "signature": ""})
            yield self._delta({"type": "thinking_delta", "thinking": delta.reasoning})
        if delta.text:
            yield from self._switch("text", {"type": "text", "text": ""})
            yield self._delta({"type": "text_delta", "text": delta.text})
        for call in delta.tool_calls or []:
            yield from self._switch(("tool", call.index), {
                "type": "tool_use", "id": call.id or new_id("toolu", sep="_"),
                "name": call.name or "", "input": {}})
            if call.arguments:
                yield self._delta({"type": "input_json_delta", "partial_json": call.arguments})
        self.stop_sequence = delta.stop_sequence or self.stop_sequence

    def finish(self, choices: list[Choice]) -> Iterator[Event]:
        [choice] = choices
        if self.blocks == 0:  # an empty answer is one empty text block, as when not streamed
            yield from self._switch("text", {"type": "text", "text": ""})
        yield from self._close()
        reason = stop_reason(choice, self.stop_sequence)
        yield named({"type": "message_delta",
                     "delta": {"stop_reason": reason,
                               "stop_sequence": self.stop_sequence
                               if reason == "stop_sequence" else None},
                     "usage": usage_dict(choice)})
        yield named({"type": "message_stop"})


# -- errors ---------------------------------------------------------------------------

# Anthropic's error type for each status; other 4xx are invalid requests, other 5xx api
# errors (a backend that failed to load or whose worker died stays 503, as `api_error`:
# `overloaded_error` would tell the client to wait, which won't help).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class AnthropicErrors:
    """`{"type": "error", "error": {"type", "message"}}`, as a body and as an `error` event."""

    def body(self, exc: errors.LlamaApiError) -> dict[str, Any]:
        fallback = "api_error" if exc.status >= 500 else "invalid_request_error"
        return {"type": "error",
                "error": {"type": ERROR_TYPES.get(exc.status, fallback), "message": exc.message}}

    def event(self, exc: errors.LlamaApiError) -> Event:
        return named(self.body(exc))


ANTHROPIC_ERRORS = AnthropicErrors()
# What an Anthropic route declares, so that its errors take Anthropic's shape.
ROUTE_OPT = {"error_shape": ANTHROPIC_ERRORS}
