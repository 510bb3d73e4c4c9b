"""The embeddings endpoint: validate the input, ask the worker, encode the vectors."""

from __future__ import annotations

import base64
import sys
from array import array

from llama_api.errors import BadRequest
from llama_api.schemas import EmbeddingRequest
from llama_api.types import EmbedRequest

MAX_INPUTS = 2048


def embed_inputs(value) -> list[str] | list[list[int]]:
    """OpenAI allows a string, strings, a token list, or token lists; none may be empty."""
    if isinstance(value, str):
        value = [value]
    elif value and all(isinstance(item, int) for item in value):
        value = [value]
    if not value:
        raise BadRequest("`input` must not be empty.", param="input")
    if not (all(isinstance(item, str) for item in value)
            or all(isinstance(item, list) for item in value)):
        raise BadRequest("`input` must be a string, a list of strings, a list of token ids "
                         "or a list of token id lists.", param="input")
    if len(value) > MAX_INPUTS:
        raise BadRequest(f"`input` has {len(value)} items; the most is {MAX_INPUTS}.",
                         param="input")
    for i, item in enumerate(value):
        if not item:
            raise BadRequest(f"`input[{i}]` is empty.", param="input")
    return value


async def embeddings_response(state, body: EmbeddingRequest) -> dict:
    inputs = embed_inputs(body.input)
    if body.dimensions is not None and body.dimensions < 1:
        raise BadRequest("`dimensions` must be at least 1.", param="dimensions")
    spec = state.registry.resolve(body.model)
    async with state.scheduler.lease(spec) as worker:
        result = await worker.embed(EmbedRequest(input=inputs, dimensions=body.dimensions))
    row_bytes = result.dims * 4
    data = []
    for i in range(result.count):
        raw = result.data[i * row_bytes:(i + 1) * row_bytes]
        if body.encoding_format == "base64":
            embedding = base64.b64encode(raw).decode()
        else:
            floats = array("f")
            floats.frombytes(raw)
            if sys.byteorder != "little":
                floats.byteswap()
            embedding = floats.tolist()
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": body.model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
