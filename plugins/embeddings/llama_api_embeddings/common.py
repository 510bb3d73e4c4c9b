"""What both backends share: the result type, input checks, options, `dimensions`.

Import-light (msgspec and the core only): numpy is imported inside the functions.
"""

from __future__ import annotations

import logging
from typing import Any

from llama_api import errors
from llama_api.types import EmbedRequest, EmbedResult

log = logging.getLogger(__name__)

MAX_INPUTS = 2048


class BatchedEmbedResult(EmbedResult, kw_only=True):
    """An EmbedResult that also says how big the batch that served it was."""

    # (batch_size, the rows in the batch that served this request, is in EmbedResult.)
    # Requests that shared that batch.
    batch_requests: int = 0


def option(spec, name: str, default: Any = None) -> Any:
    value = (spec.options or {}).get(name)
    return default if value is None else value


def as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def check_input(request: EmbedRequest, max_inputs: int = MAX_INPUTS) -> bool:
    """Validate `input`; return True when it holds token id lists rather than strings."""
    items = request.input
    if not items:
        raise errors.BadRequest("'input' must not be empty", param="input")
    if len(items) > max_inputs:
        raise errors.BadRequest(
            f"'input' has {len(items)} items; at most {max_inputs} are allowed per request",
            param="input",
        )
    first = items[0]
    token_ids = not isinstance(first, str)
    for index, item in enumerate(items):
        if isinstance(item, str) == token_ids:
            raise errors.BadRequest(
                "'input' must be all strings or all lists of token ids", param="input"
            )
        if len(item) == 0:
            what = "an empty string" if isinstance(item, str) else "an empty token list"
            raise errors.BadRequest(f"'input[{index}]' is {what}", param="input")
    return token_ids


def check_dimensions(dimensions: int | None, model_dims: int) -> None:
    if dimensions is None:
        return
    if dimensions < 1:
        raise errors.BadRequest("'dimensions' must be at least 1", param="dimensions")
    if dimensions > model_dims:
        raise errors.BadRequest(
            f"'dimensions' is {dimensions}, but this model makes {model_dims}-dimensional "
            "vectors",
            param="dimensions",
        )


def shorten(vectors, dimensions: int | None):
    """Matryoshka-style shortening: keep the first `dimensions` values, renormalize (L2)."""
    import numpy as np

    vectors = np.asarray(vectors, dtype=np.float32)
    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    cut = np.array(vectors[:, :dimensions], dtype=np.float32)
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return cut / np.maximum(norms, 1e-12)
