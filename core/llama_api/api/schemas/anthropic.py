"""The Anthropic Messages request bodies, as msgspec Structs: where types and ranges are checked.

Content blocks are a tagged union on `type`. Image and document blocks decode (so that the
route can say clearly that it does not take them) and are refused where the request is
normalized, in `llama_api.api.anthropic`, as is what a type can't say (a forced tool that
is not among `tools`). Unknown fields (`cache_control`, `citations`, `service_tier`, ...)
are ignored. Bounds are msgspec `Meta` constraints, visible in /schema.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from llama_api.api.schemas.openai import MAX_STOP, AtLeastOne, Fraction, NonNegativeInt, ToolName

Name = Annotated[str, Meta(min_length=1)]


class TextBlock(msgspec.Struct, tag="text", tag_field="type", kw_only=True):
    text: str


class ImageBlock(msgspec.Struct, tag="image", tag_field="type", kw_only=True):
    source: dict[str, Any] | None = None


class DocumentBlock(msgspec.Struct, tag="document", tag_field="type", kw_only=True):
    source: dict[str, Any] | None = None


class ToolUseBlock(msgspec.Struct, tag="tool_use", tag_field="type", kw_only=True):
    id: Name
    name: Name
    input: dict[str, Any] = {}


class ToolResultBlock(msgspec.Struct, tag="tool_result", tag_field="type", kw_only=True):
    tool_use_id: Name
    content: str | list[TextBlock | ImageBlock | DocumentBlock] | None = None
    is_error: bool | None = None


class ThinkingBlock(msgspec.Struct, tag="thinking", tag_field="type", kw_only=True):
    thinking: str = ""
    signature: str | None = None


class RedactedThinkingBlock(msgspec.Struct, tag="redacted_thinking", tag_field="type",
                            kw_only=True):
    data: str = ""


ContentBlock = (TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock
                | ThinkingBlock | RedactedThinkingBlock)


class Message(msgspec.Struct, kw_only=True):
    # A system message may come anywhere in `messages` (the current API; Claude Code sends
    # one in every conversation).
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]


class Tool(msgspec.Struct, kw_only=True):
    name: ToolName
    description: str | None = None
    input_schema: dict[str, Any]
    # Anthropic's built-in tools (web search, bash, ...) carry a versioned type; a client
    # tool has none, or "custom".
    type: str | None = None


class ToolChoiceAuto(msgspec.Struct, tag="auto", tag_field="type", kw_only=True):
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(msgspec.Struct, tag="any", tag_field="type", kw_only=True):
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(msgspec.Struct, tag="tool", tag_field="type", kw_only=True):
    name: ToolName
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(msgspec.Struct, tag="none", tag_field="type", kw_only=True):
    disable_parallel_tool_use: bool | None = None  # meaningless here; read like the others


class Metadata(msgspec.Struct, kw_only=True):
    user_id: str | None = None


class Thinking(msgspec.Struct, kw_only=True):
    """`disabled` turns a thinking model's thinking off (where its chat template can);
    `enabled` and `adaptive` leave it on. Its thinking comes back as `thinking` blocks."""

    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: NonNegativeInt | None = None


class OutputConfig(msgspec.Struct, kw_only=True):
    """Claude Code sends `{"effort": "high"}`: any effort leaves thinking on."""

    effort: str | None = None


class MessagesInput(msgspec.Struct, kw_only=True):
    """What a model reads: the body of `count_tokens`, and the start of a message request."""

    model: str
    messages: Annotated[list[Message], Meta(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None


class MessagesRequest(MessagesInput, kw_only=True):
    max_tokens: AtLeastOne  # required, as Anthropic requires it
    stop_sequences: Annotated[list[str], Meta(max_length=MAX_STOP)] | None = None
    temperature: Fraction | None = None  # 0..1 in Anthropic's API
    top_p: Fraction | None = None
    top_k: NonNegativeInt | None = None
    metadata: Metadata | None = None
    stream: bool | None = None
