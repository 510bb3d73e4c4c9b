"""The OpenAI request bodies, as msgspec Structs: where every type and range is checked.

Every optional field is `T | None = None`: clients such as LangChain send `null` for
fields they don't set, and null means "absent". Unknown fields are ignored.
Bounds are msgspec `Meta` constraints, so that a value out of range is a 400 naming the
field (see `api.error_responses.validation_error_handler`) and the bound shows in /schema.
What a type can't say (a prompt list that mixes kinds, a tool name missing from `tools`)
is checked where the request is normalized, in `llama_api.api.<resource>`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

MAX_N = 16
MAX_STOP = 16
MAX_LOGPROBS = 20
MAX_EMBED_INPUTS = 2048



def documented(**schema: Any) -> Meta:
    """Write `schema` (fields of Litestar's `Schema`) into /schema as it is. Litestar leaves
    out a bound of 0 (it tests the bound's truth) and the bounds of a union's arms or a map's
    values; without this, clients and the schema fuzzer never see them."""
    return Meta(extra_json_schema={"extra": schema})


# llama.cpp reads token ids as 32-bit integers; a larger id is a 400 naming the field.
MAX_TOKEN_ID = 2**31 - 1
TokenId = Annotated[int, Meta(ge=0, le=MAX_TOKEN_ID), documented(minimum=0)]
AtLeastOne = Annotated[int, Meta(ge=1)]
NonNegativeInt = Annotated[int, Meta(ge=0), documented(minimum=0)]
NonNegative = Annotated[float, Meta(ge=0.0), documented(minimum=0.0)]
Fraction = Annotated[float, Meta(ge=0.0, le=1.0), documented(minimum=0.0)]
Temperature = Annotated[float, Meta(ge=0.0, le=2.0), documented(minimum=0.0)]  # OpenAI's range
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
Bias = Annotated[float, Meta(ge=-100.0, le=100.0)]
# Logits are divided by it: 0 would divide by zero (1 = no penalty).
PenaltyFactor = Annotated[float, Meta(gt=0.0), documented(exclusive_minimum=0.0)]
# JSON object keys that msgspec reads as token ids, and their bias.
LogitBias = Annotated[dict[TokenId, Bias], documented(
    property_names={"pattern": "^[0-9]+$"},
    additional_properties={"type": "number", "minimum": -100.0, "maximum": 100.0})]
Logprobs = Annotated[int, Meta(ge=0, le=MAX_LOGPROBS), documented(minimum=0)]
Stop = Annotated[str | Annotated[list[str], Meta(max_length=MAX_STOP)],
                 documented(max_items=MAX_STOP)]


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool | None = None


class SamplingFields(msgspec.Struct, kw_only=True):
    model: str
    max_tokens: AtLeastOne | None = None
    temperature: Temperature | None = None
    top_p: Fraction | None = None
    top_k: NonNegativeInt | None = None
    min_p: Fraction | None = None
    repeat_penalty: PenaltyFactor | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    n: Annotated[int, Meta(ge=1, le=MAX_N)] | None = None
    stop: Stop | None = None
    seed: int | None = None
    # JSON keys are strings; msgspec reads them as token ids (a key that isn't one is a 400).
    logit_bias: LogitBias | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    # llama.cpp sampling extras that some clients send; passed to the backend as `extra`
    # (contract.records.EXTRA_SAMPLING_FIELDS names them).
    mirostat_mode: Annotated[int, Meta(ge=0, le=2), documented(minimum=0)] | None = None
    mirostat_tau: NonNegative | None = None
    mirostat_eta: NonNegative | None = None
    typical_p: Fraction | None = None
    xtc_probability: Fraction | None = None
    xtc_threshold: Fraction | None = None
    grammar: str | None = None


# -- completions ----------------------------------------------------------------------

class CompletionRequest(SamplingFields, kw_only=True):
    # A string, strings, a token list or token lists (a mix is refused when normalized).
    prompt: str | list[str | TokenId | list[TokenId]] = ""
    logprobs: Logprobs | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: AtLeastOne | None = None
    # Default true: control-token spellings in a text prompt are the tokens (the prompt is
    # the caller's own template); false reads the prompt as plain text.
    parse_special: bool | None = None


# -- chat -----------------------------------------------------------------------------

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
# OpenAI's (and Anthropic's) rule for a tool's name: an identifier, so that no name can carry
# markup into the prompt the tools are shown in. (?!\n): Python's $ also matches before a
# final newline.
ToolName = Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}(?!\n)$")]


class ImageURL(msgspec.Struct, kw_only=True):
    url: str
    detail: str | None = None


class ContentPart(msgspec.Struct, kw_only=True):
    """One part of a message's content: text, or an image (`image_url`, for vision models)."""

    type: str
    text: str | None = None
    image_url: ImageURL | str | None = None


class ChatMessage(msgspec.Struct, kw_only=True):
    role: Role
    content: str | list[str | ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(msgspec.Struct, kw_only=True):
    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(msgspec.Struct, kw_only=True):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class FunctionName(msgspec.Struct, kw_only=True):
    name: ToolName


class NamedToolChoice(msgspec.Struct, kw_only=True):
    type: Literal["function"] = "function"
    function: FunctionName


class TextFormat(msgspec.Struct, tag="text", tag_field="type"):
    pass


class JsonObjectFormat(msgspec.Struct, tag="json_object", tag_field="type", kw_only=True):
    schema: dict[str, Any] | None = None  # an extension some clients send (llama.cpp's server)


class JsonSchema(msgspec.Struct, kw_only=True):
    name: str | None = None
    description: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class JsonSchemaFormat(msgspec.Struct, tag="json_schema", tag_field="type", kw_only=True):
    json_schema: JsonSchema


class ChatCompletionRequest(SamplingFields, kw_only=True):
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    logprobs: bool | None = None
    top_logprobs: Logprobs | None = None
    max_completion_tokens: AtLeastOne | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: TextFormat | JsonObjectFormat | JsonSchemaFormat | None = None
    # The deprecated form of tools and tool_choice.
    functions: list[FunctionDefinition] | None = None
    function_call: Literal["none", "auto"] | FunctionName | None = None
    # How a thinking model's reasoning comes back: "none" leaves it inline in `content`;
    # otherwise it is split into `reasoning_content`.
    reasoning_format: Literal["none", "auto", "deepseek", "parsed"] | None = None
    # "none" turns a thinking model's thinking off; any other effort leaves it on.
    reasoning_effort: str | None = None


# -- embeddings -----------------------------------------------------------------------

class EmbeddingRequest(msgspec.Struct, kw_only=True):
    model: str
    # A string, strings, a token list or token lists; none of them empty.
    input: Annotated[Annotated[str, Meta(min_length=1)]
                     | Annotated[list[str | TokenId | list[TokenId]],
                                 Meta(min_length=1, max_length=MAX_EMBED_INPUTS)],
                     documented(min_length=1, min_items=1, max_items=MAX_EMBED_INPUTS)]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: AtLeastOne | None = None
    user: str | None = None
