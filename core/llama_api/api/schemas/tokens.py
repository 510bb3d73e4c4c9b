"""The bodies of /tokenize, /detokenize and /v1/rerank, as msgspec Structs.

Same conventions as `llama_api.api.schemas.openai`: optional fields are `T | None = None` (null means
absent), unknown fields are ignored, bounds are msgspec `Meta` constraints (a 400 naming
the field, visible in /schema). What a type can't say (exactly one of `prompt` and
`messages`) is checked in `llama_api.api.tokenize`.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from llama_api.api.schemas.openai import ChatMessage, TokenId, Tool

MAX_RERANK_DOCUMENTS = 1024


class TokenizeBody(msgspec.Struct, kw_only=True):
    model: str
    # The text to tokenize; `content` is llama.cpp's server's name for it.
    prompt: str | None = None
    content: str | None = None
    # Or chat messages, rendered with the model's chat template and generation prompt.
    messages: Annotated[list[ChatMessage], Meta(min_length=1)] | None = None
    tools: list[Tool] | None = None
    add_special_tokens: bool | None = None  # default true: BOS and the like, as a request has
    # Default true: control-token spellings in `prompt` are the tokens, as a completion reads
    # its prompt; messages are always read as plain text inside the chat template's markup.
    parse_special: bool | None = None
    with_pieces: bool | None = None  # tokens as [{"id", "piece"}]


class DetokenizeBody(msgspec.Struct, kw_only=True):
    model: str
    tokens: list[TokenId]


class RerankDocument(msgspec.Struct, kw_only=True):
    text: str


class RerankBody(msgspec.Struct, kw_only=True):
    model: str
    query: Annotated[str, Meta(min_length=1)]
    documents: Annotated[list[str | RerankDocument],
                         Meta(min_length=1, max_length=MAX_RERANK_DOCUMENTS)]
    top_n: Annotated[int, Meta(ge=1)] | None = None  # default: every document
    return_documents: bool | None = None  # default false
