"""What both backends share: the result type and options.

The core validates `input` (count, no empty item, all texts or all token ids) at the HTTP
edge and cuts the vectors to a request's `dimensions` there, so backends return
full-width vectors; what is left here depends on the model.

Import-light (msgspec and the core only): numpy is imported inside the functions.
"""

from __future__ import annotations

import logging
from typing import Any

from llama_api.contract.records import EmbedResult

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
