"""The OpenAI Responses API's request bodies, as msgspec Structs (see `schemas` for the rules).

Input items and tools are loose Structs (`type` a string) rather than tagged unions: a
message item may come without a `type`, and an item or tool kind we don't serve (an image
part, a `web_search` tool) gets a 400 that names it, from `api.responses`, instead of a
decoding error that lists every tag.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from llama_api.api.schemas.openai import AtLeastOne, Fraction, Temperature, ToolName

MAX_METADATA = 16
MAX_INPUT_ITEMS_PAGE = 100

InputRole = Literal["user", "assistant", "system", "developer"]


class InputContentPart(msgspec.Struct, kw_only=True):
    """`input_text` / `output_text` parts, and `input_image` (a URL) for vision models;
    others (files) are refused."""

    type: str
    text: str | None = None
    image_url: str | None = None
    detail: str | None = None


class InputItem(msgspec.Struct, kw_only=True):
    """A message (`type` "message" or absent), a `function_call`, a `function_call_output`,
    or a `reasoning` item handed back from an earlier output."""

    type: str | None = None
    id: str | None = None
    role: InputRole | None = None
    content: str | list[InputContentPart] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[InputContentPart] | None = None
    status: str | None = None


class ResponsesTool(msgspec.Struct, kw_only=True):
    """A function tool, or a `namespace` of function tools (`tools`); a hosted tool (web
    search, file search, ...) is left out of what the model is offered (`api.responses`)."""

    type: str
    name: ToolName | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    tools: list[ResponsesTool] | None = None  # a namespace's function tools


class ToolChoiceObject(msgspec.Struct, kw_only=True):
    type: str
    name: str | None = None


class TextFormatPlain(msgspec.Struct, tag="text", tag_field="type"):
    pass


class TextFormatJsonObject(msgspec.Struct, tag="json_object", tag_field="type"):
    pass


class TextFormatJsonSchema(msgspec.Struct, tag="json_schema", tag_field="type", kw_only=True):
    name: str | None = None
    schema: dict[str, Any]
    description: str | None = None
    strict: bool | None = None


class TextConfig(msgspec.Struct, kw_only=True):
    format: TextFormatPlain | TextFormatJsonObject | TextFormatJsonSchema | None = None
    verbosity: str | None = None


class ReasoningConfig(msgspec.Struct, kw_only=True):
    """`effort` "none" turns a thinking model's thinking off; `summary` is echoed back (a
    local model's thinking comes back whole, as reasoning items)."""

    effort: str | None = None
    summary: str | None = None


class ResponseRequest(msgspec.Struct, kw_only=True):
    model: str
    input: str | Annotated[list[InputItem], Meta(min_length=1)]
    instructions: str | None = None
    max_output_tokens: AtLeastOne | None = None
    temperature: Temperature | None = None
    top_p: Fraction | None = None
    tools: list[ResponsesTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceObject | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    stream: bool | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    metadata: Annotated[dict[Annotated[str, Meta(max_length=64)],
                             Annotated[str, Meta(max_length=512)]],
                        Meta(max_length=MAX_METADATA)] | None = None
    background: bool | None = None
    user: str | None = None
    truncation: Literal["auto", "disabled"] | None = None
