"""POST /v1/responses and the stored responses: the request to input items and one
normalized GenerateRequest, the conversation a `previous_response_id` continues, the renderer
and the plain answer that `routes.generation` runs, and the input items list.

Input items are kept in one canonical shape (a message's content is a list of text parts,
every item has an id): that is what `input_items` lists, and what a later turn reads back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from llama_api import errors
from llama_api.api.error_responses import RESPONSES_ERRORS
from llama_api.api.images import place
from llama_api.api.openai_common import think_for
from llama_api.api.responses_output import ResponseEvents, openai_id, text_part
from llama_api.api.responses_store import ResponsesStore
from llama_api.api.schemas.responses import (
    InputContentPart,
    InputItem,
    ResponseRequest,
    ResponsesTool,
    TextFormatJsonObject,
    TextFormatJsonSchema,
    ToolChoiceObject,
)
from llama_api.api.streaming import Event
from llama_api.contract.records import GenerateRequest, ResponseFormat, ToolChoice
from llama_api.errors import BadRequest, NotSupported

TEXT_PART_TYPES = ("input_text", "output_text", "text")

log = logging.getLogger("llama_api.api")


# -- the request ----------------------------------------------------------------------

def refuse_unsupported(body: ResponseRequest) -> None:
    if body.background:
        raise NotSupported("`background` mode is not supported: responses are generated "
                           "while the request waits (or streams).", param="background")


def offered_tools(body: ResponseRequest) -> list[tuple[ResponsesTool, str | None]]:
    """The function tools the model is offered, each with its namespace (None: none).
    A namespace offers its function tools; a hosted tool (web search, file search, code
    interpreter, computer use, image generation, remote MCP, ...) is left out, as the
    server can't run it: logged once per model and kind."""
    offered = []
    for i, tool in enumerate(body.tools or []):
        if tool.type == "namespace":
            members = [(f"tools[{i}].tools[{j}]", member, tool.name)
                       for j, member in enumerate(tool.tools or [])]
        else:
            members = [(f"tools[{i}]", tool, None)]
        for where, member, namespace in members:
            if member.type != "function":
                if (body.model, member.type) not in LEFT_OUT:
                    LEFT_OUT.add((body.model, member.type))
                    log.warning("model %s: %r tools are left out of what the model is "
                                "offered (this server runs function tools only)",
                                body.model, member.type)
                continue
            if not member.name:
                raise BadRequest(f"`{where}.name` is required.", param=f"{where}.name")
            offered.append((member, namespace))
    return offered


LEFT_OUT: set[tuple[str, str]] = set()  # (model, tool type) pairs logged already


def part_texts(param: str, parts: str | list[InputContentPart] | None,
               images: bool = False) -> list:
    """The parts' texts; with `images`, an `input_image` part as its item part (a dict)."""
    if parts is None:
        return []
    if isinstance(parts, str):
        return [parts]
    texts: list = []
    for j, part in enumerate(parts):
        if images and part.type == "input_image":
            if not part.image_url:
                raise NotSupported(f"`{param}[{j}]` has no `image_url` (file ids are not "
                                   "supported).", param=f"{param}[{j}]")
            texts.append({"type": "input_image", "image_url": part.image_url,
                          "detail": part.detail or "auto"})
            continue
        if part.type not in TEXT_PART_TYPES:
            raise NotSupported(f"`{param}[{j}]` is an {part.type!r} part; only text parts "
                               "are supported.", param=f"{param}[{j}]")
        texts.append(part.text or "")
    return texts


def message_item(role: str, texts: list[str], item_id: str | None = None) -> dict[str, Any]:
    kind = "message" if role == "assistant" else "input"
    parts = [text if isinstance(text, dict) else text_part(kind, text) if kind == "message"
             else {"type": "input_text", "text": text} for text in texts]
    return {"id": item_id or openai_id("msg"), "type": "message", "role": role,
            "status": "completed", "content": parts}


def canonical_item(i: int, item: InputItem) -> dict[str, Any]:
    """One input item in the shape `input_items` lists; unknown kinds are refused."""
    param = f"input[{i}]"

    def required(name: str):
        value = getattr(item, name)
        if value is None:
            raise BadRequest(f"`{param}.{name}` is required.", param=f"{param}.{name}")
        return value

    kind = item.type or "message"
    if kind == "message":
        return message_item(required("role"), part_texts(
            f"{param}.content", item.content, images=item.role != "assistant"), item.id)
    if kind == "function_call":
        return {"id": item.id or openai_id("fc"), "type": "function_call",
                "status": "completed", "call_id": required("call_id"),
                "name": required("name"), "arguments": item.arguments or "{}"}
    if kind == "function_call_output":
        output = "".join(part_texts(f"{param}.output", required("output")))
        return {"id": item.id or openai_id("fco"), "type": "function_call_output",
                "status": "completed", "call_id": required("call_id"), "output": output}
    if kind == "reasoning":  # handed back from an earlier output
        return {"id": item.id or openai_id("rs"), "type": "reasoning", "summary": [],
                "content": [{"type": "reasoning_text", "text": text}
                            for text in part_texts(f"{param}.content", item.content)]}
    raise NotSupported(f"`{param}` is a {kind!r} item; only messages, function_call, "
                       "function_call_output and reasoning items are supported.",
                       param=f"{param}.type")


def input_items(body: ResponseRequest) -> list[dict[str, Any]]:
    if isinstance(body.input, str):
        return [message_item("user", [body.input])]
    return [canonical_item(i, item) for i, item in enumerate(body.input)]


def chat_messages(items: list[dict[str, Any]], images: list,
                  first_input: int = 0) -> list[dict[str, Any]]:
    """Items (input and earlier output) as the chat messages a backend reads.

    Function calls join the assistant message before them; the model's earlier thinking
    (reasoning items) is not part of the next prompt, as chat templates drop it too.
    Image parts become markers, kept in `images`, named `input[i]` from `first_input` on
    (before it: items of earlier responses, named by id)."""
    messages: list[dict[str, Any]] = []
    for k, item in enumerate(items):
        if item["type"] == "message":
            where = f"input[{k - first_input}]" if k >= first_input else item["id"]
            text = "".join(
                place(images, f"{where}.content[{j}]", url=part["image_url"])
                if part.get("type") == "input_image" else part.get("text", "")
                for j, part in enumerate(item["content"]))
            messages.append({"role": item["role"], "content": text})
        elif item["type"] == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            if messages and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif item["type"] == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"],
                             "content": item["output"]})
    return messages


def tool_fields(body: ResponseRequest, offered: list[tuple[ResponsesTool, str | None]]
                ) -> tuple[list[dict[str, Any]] | None, ToolChoice | None, str | None]:
    """tools, tool_choice and the forced name, from the `offered_tools` of the request."""
    tools = []
    offered = [tool for tool, _ in offered]
    for tool in offered:
        function = {"name": tool.name}
        if tool.description is not None:
            function["description"] = tool.description
        if tool.parameters is not None:
            function["parameters"] = tool.parameters
        tools.append({"type": "function", "function": function})
    choice, name = body.tool_choice, None
    if isinstance(choice, ToolChoiceObject):
        if choice.type != "function" or not choice.name:
            raise NotSupported("`tool_choice` must be \"auto\", \"none\", \"required\" or "
                               "{\"type\": \"function\", \"name\": ...}.", param="tool_choice")
        choice, name = "function", choice.name
    if not tools:
        if choice in (None, "none", "auto"):
            return None, None, None
        raise BadRequest("`tool_choice` asks for a tool call but no tools were given.",
                         param="tool_choice")
    names = [tool.name for tool in offered]
    if name is not None and name not in names:
        raise BadRequest(f"`tool_choice` names function {name!r}, which is not among the "
                         f"tools ({', '.join(names)}).", param="tool_choice")
    return tools, choice, name


def response_format(body: ResponseRequest) -> ResponseFormat | None:
    fmt = body.text.format if body.text else None
    if isinstance(fmt, TextFormatJsonSchema):
        return ResponseFormat(type="json_schema", schema=fmt.schema)
    if isinstance(fmt, TextFormatJsonObject):
        return ResponseFormat(type="json_object")
    return None  # absent, or "text"


def generate_request(body: ResponseRequest, history: list[dict[str, Any]],
                     items: list[dict[str, Any]],
                     offered: list[tuple[ResponsesTool, str | None]]) -> GenerateRequest:
    """The one GenerateRequest: instructions, the earlier turns, then this input."""
    messages = [{"role": "system", "content": body.instructions}] if body.instructions else []
    images: list = []  # ImageSources until routes' `images.prepare`
    messages += chat_messages([*history, *items], images, first_input=len(history))
    tools, tool_choice, tool_name = tool_fields(body, offered)
    return GenerateRequest(messages=messages, images=images, max_tokens=body.max_output_tokens,
                           temperature=body.temperature, top_p=body.top_p, tools=tools,
                           tool_choice=tool_choice, tool_name=tool_name,
                           parallel_tool_calls=body.parallel_tool_calls is not False,
                           response_format=response_format(body),
                           think=think_for(body.reasoning.effort if body.reasoning else None))


# -- the response object's echo of the request ----------------------------------------

def text_config(body: ResponseRequest) -> dict[str, Any]:
    fmt = body.text.format if body.text else None
    if isinstance(fmt, TextFormatJsonSchema):
        spec = {"type": "json_schema", "name": fmt.name or "response", "schema": fmt.schema,
                "strict": fmt.strict}
        if fmt.description is not None:
            spec["description"] = fmt.description
        return {"format": spec}
    return {"format": {"type": "json_object" if isinstance(fmt, TextFormatJsonObject)
                       else "text"}}


def echoed_fields(body: ResponseRequest,
                  offered: list[tuple[ResponsesTool, str | None]]) -> dict[str, Any]:
    choice = body.tool_choice
    if isinstance(choice, ToolChoiceObject):
        choice = {"type": choice.type, "name": choice.name}
    return {
        "model": body.model,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "metadata": body.metadata or {},
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "reasoning": {"effort": body.reasoning.effort if body.reasoning else None,
                      "summary": body.reasoning.summary if body.reasoning else None},
        "store": body.store is not False,
        "temperature": body.temperature,
        "text": text_config(body),
        "tool_choice": choice or "auto",
        "tools": [{"type": "function", "name": tool.name, "description": tool.description,
                   "parameters": tool.parameters, "strict": tool.strict}
                  for tool, _ in offered],
        "top_p": body.top_p,
        "truncation": body.truncation or "disabled",
        "user": body.user,
        "background": False,
    }


class ResponseErrors:
    """Errors before the stream: OpenAI's body; after it started: `response.failed`."""

    def __init__(self, events: ResponseEvents):
        self.events = events

    def body(self, exc: errors.LlamaApiError) -> dict[str, Any]:
        return RESPONSES_ERRORS.body(exc)

    def event(self, exc: errors.LlamaApiError) -> Event:
        return self.events.failed(exc)


# -- the routes' work -------------------------------------------------------------------

async def prepare(store: ResponsesStore, body: ResponseRequest, key: bytes | None
                  ) -> tuple[list[GenerateRequest], ResponseEvents, Callable]:
    """The one GenerateRequest, the renderer (of the stream, and of the plain answer's
    state), and the plain answer: the finished response, stored first in a thread, as
    `key`'s (the API key of the request)."""
    refuse_unsupported(body)
    items = input_items(body)
    history = (await store.conversation(body.previous_response_id, key)
               if body.previous_response_id else [])
    offered = offered_tools(body)  # once: it logs what it leaves out
    generate = generate_request(body, history, items, offered)
    stored = body.store is not False
    if stored:
        await store.ready()  # a store that can't open fails before any work
    # A stream stores its response just before `response.completed`, on the event loop:
    # one INSERT on the store's own writer connection, which reads never hold.
    keep = (partial(store.put_blocking, input_items=items, key=key)
            if stored and body.stream else None)
    namespaces = {tool.name: namespace for tool, namespace in offered if namespace}
    events = ResponseEvents(echoed_fields(body, offered), keep=keep, namespaces=namespaces,
                            parallel_tool_calls=body.parallel_tool_calls is not False)

    async def answer(_choices) -> dict[str, Any]:
        response = events.complete()
        if stored:
            await store.put(response, items, key)
        return response

    return [generate], events, answer


def input_items_page(items: list[dict[str, Any]], *, order: str, limit: int,
                     after: str | None) -> dict[str, Any]:
    """One page of a response's input items, as OpenAI lists them (newest first by default)."""
    ordered = items[::-1] if order == "desc" else items
    start = 0
    if after is not None:
        ids = [item["id"] for item in ordered]
        if after not in ids:
            raise BadRequest(f"`after` names {after!r}, which is not an input item of this "
                             "response.", param="after")
        start = ids.index(after) + 1
    page = ordered[start:start + limit]
    return {"object": "list", "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": start + limit < len(ordered)}
