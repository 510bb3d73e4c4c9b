"""What both backends share: the result type, options, `dimensions`.

The core validates `input` (count, no empty item, all texts or all token ids) and
`dimensions` >= 1 at the HTTP edge; what is left here depends on the model.

Import-light (msgspec and the core only): numpy is imported inside the functions.
"""

from __future__ import annotations

import logging
from typing import Any

from llama_api import errors
from llama_api.types import EmbedResult

log = logging.getLogger(__name__)


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


def check_dimensions(dimensions: int | None, model_dims: int) -> None:
    """`dimensions` past this model's vector size is a 400 (the core checked it is >= 1)."""
    if dimensions is not None and dimensions > model_dims:
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
