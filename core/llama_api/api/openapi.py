"""What the routes document in /schema beyond their bodies: the errors each answers, in its
API's shape, and which answers may be server-sent event streams.

A route declares its errors once with `responses=errors(...)`, naming the statuses it really
answers; the groups below name the usual sets. Litestar's own 400 (its ValidationException
shape) is replaced by ours, as `error_responses.validation_error_handler` answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Operation, Schema
from litestar.openapi.spec.enums import OpenAPIType


class OpenAIErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(msgspec.Struct):
    """OpenAI's error body (`error_responses.error_body`)."""

    error: OpenAIErrorDetail


class AnthropicErrorDetail(msgspec.Struct):
    type: str
    message: str


class AnthropicErrorBody(msgspec.Struct):
    """Anthropic's error body (`anthropic.AnthropicErrors`)."""

    type: Literal["error"]
    error: AnthropicErrorDetail


OPENAI = OpenAIErrorBody
ANTHROPIC = AnthropicErrorBody

WHY = {
    400: "Invalid request: the message and `param` name the field",
    401: "Missing or wrong API key",
    403: "An API key on a route that needs an admin key",
    404: "Unknown model (the message lists those that exist), or unknown stored object",
    408: "The request body did not arrive in time (--body-timeout)",
    409: "Pinned models hold every worker or all the memory, or the model is busy",
    413: "Request body too large",
    429: "The queue is full; retry after `Retry-After` seconds",
    503: "The model could not load, its worker died, or it can never fit the memory limit",
}

# The usual sets: any guarded route; a route that reads a body; a route that runs a model.
GUARDED = (401,)
READS_BODY = (400, 408, 413)
RUNS_MODEL = (404, 409, 429, 503)
MODEL_REQUEST = (*GUARDED, *READS_BODY, *RUNS_MODEL)


def errors(*statuses: int, shape: type[msgspec.Struct] = OPENAI) -> dict[int, ResponseSpec]:
    """`responses=` for a route that answers these error statuses with `shape`'s body."""
    return {status: ResponseSpec(data_container=shape, description=WHY[status],
                                 generate_examples=False)
            for status in sorted(set(statuses))}


EVENT_STREAM = "text/event-stream"


@dataclass
class JSONOrStream(Operation):
    """`operation_class=` for a route that answers JSON, or server-sent events when the
    request asks for `stream: true`."""

    def __post_init__(self) -> None:
        success = (self.responses or {}).get("200")
        if isinstance(success, OpenAPIResponse) and success.content is not None:
            success.content[EVENT_STREAM] = OpenAPIMediaType(schema=Schema(
                type=OpenAPIType.STRING,
                description="Server-sent events, when the request has `stream: true`"))
