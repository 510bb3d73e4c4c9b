"""POST /v1/embeddings: the request to an EmbedRequest, the vectors to OpenAI's response."""

from __future__ import annotations

import base64
import sys
from array import array

from llama_api.api.schemas.openai import EmbeddingRequest
from llama_api.contract.records import EmbedRequest
from llama_api.errors import BadRequest


def embed_request(body: EmbeddingRequest) -> EmbedRequest:
    """A string, strings, a token list, or token lists; at most MAX_EMBED_INPUTS (checked by
    the schema), none of them empty. The backend gets a list of one kind."""
    value = body.input
    if isinstance(value, str) or all(isinstance(item, int) for item in value):
        value = [value]
    if not (all(isinstance(item, str) for item in value)
            or all(isinstance(item, list) for item in value)):
        raise BadRequest("`input` must be a string, a list of strings, a list of token ids "
                         "or a list of token id lists.", param="input")
    for i, item in enumerate(value):
        if not item:
            raise BadRequest(f"`input[{i}]` is empty.", param="input")
    return EmbedRequest(input=value, dimensions=body.dimensions)


def vector(raw: bytes, encoding_format: str | None):
    """One row of float32s: base64 of the little-endian bytes, or a list of floats."""
    if encoding_format == "base64":
        return base64.b64encode(raw).decode()
    floats = array("f")
    floats.frombytes(raw)
    if sys.byteorder != "little":
        floats.byteswap()
    return floats.tolist()


def embeddings_response(body: EmbeddingRequest, result) -> dict:
    """`result` is what the worker sent: `count` rows of `dims` float32s in `data`."""
    row_bytes = result.dims * 4
    data = [
        {"object": "embedding", "index": i,
         "embedding": vector(result.data[i * row_bytes:(i + 1) * row_bytes], body.encoding_format)}
        for i in range(result.count)
    ]
    return {
        "object": "list",
        "data": data,
        "model": body.model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
