"""POST /v1/embeddings: the request to an EmbedRequest, the vectors to OpenAI's response."""

from __future__ import annotations

import base64
import math
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
    return EmbedRequest(input=value)


def rows_of(data: bytes, count: int, dims: int) -> list[array]:
    """The worker's little-endian float32 bytes as `count` rows of `dims` floats."""
    floats = array("f")
    floats.frombytes(data)
    if sys.byteorder != "little":
        floats.byteswap()
    return [floats[i * dims:(i + 1) * dims] for i in range(count)]


def shortened(rows: list[array], dims: int, dimensions: int | None) -> list[array]:
    """Each row cut to `dimensions` values and L2-renormalized, as OpenAI shortens its
    embeddings (a zero row stays zero). More than the model's `dims` is a 400 naming it;
    the schema checked `dimensions` >= 1. Backends always return full-width vectors."""
    if dimensions is not None and dimensions > dims:
        raise BadRequest(f"`dimensions` is {dimensions}, but this model makes "
                         f"{dims}-dimensional vectors.", param="dimensions")
    if dimensions is None or dimensions == dims:
        return rows
    cut = []
    for row in rows:
        row = row[:dimensions]
        norm = math.sqrt(sum(value * value for value in row))
        cut.append(array("f", (value / norm for value in row)) if norm > 0 else row)
    return cut


def encoded(row: array, encoding_format: str | None):
    """One row: base64 of its little-endian float32 bytes, or a list of floats."""
    if encoding_format != "base64":
        return row.tolist()
    if sys.byteorder != "little":
        row = array("f", row)
        row.byteswap()
    return base64.b64encode(row.tobytes()).decode()


def embeddings_response(body: EmbeddingRequest, result) -> dict:
    """`result` is what the worker sent: `count` full-width rows of `dims` float32s."""
    rows = shortened(rows_of(result.data, result.count, result.dims), result.dims,
                     body.dimensions)
    data = [{"object": "embedding", "index": i, "embedding": encoded(row, body.encoding_format)}
            for i, row in enumerate(rows)]
    return {
        "object": "list",
        "data": data,
        "model": body.model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
