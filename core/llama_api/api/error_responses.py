"""Exceptions to HTTP error responses, in the error shape of the route that failed.

Every failure becomes a `LlamaApiError` first (a validation error, an unknown route, a body
that isn't UTF-8); one handler then renders it with the route's `ErrorShape`, which a route
declares in its opt (`opt={"error_shape": ...}`; OpenAI's by default). The streaming path
renders errors after the answer started with the same shape's `event`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from llama_api import errors
from llama_api.api.streaming import ErrorShape, Event

log = logging.getLogger("llama_api.api")


def error_body(message: str, type_: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error body, for JSON answers and stream events alike."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class OpenAIErrors:
    """OpenAI's error shape. `fields`: how this route's API names the core's request fields
    that a backend's error may name in `param` (a field and what is inside it)."""

    def __init__(self, fields: dict[str, str] | None = None):
        self.fields = fields or {}

    def body(self, exc: errors.LlamaApiError) -> dict[str, Any]:
        return error_body(exc.message, exc.type, self.param(exc.param), exc.code)

    def param(self, param: str | None) -> str | None:
        head = re.match(r"[a-z_]+", param or "")
        if head is None or head.group(0) not in self.fields:
            return param
        return self.fields[head.group(0)] + param[head.end():]

    def event(self, exc: errors.LlamaApiError) -> Event:
        return Event(self.body(exc))


OPENAI_ERRORS = OpenAIErrors()
# The Responses API reads its prompt from `input` and caps it with `max_output_tokens`; its
# messages are not the request's items one for one, so an index is left out.
RESPONSES_ERRORS = OpenAIErrors({"messages": "input", "prompt": "input",
                                 "max_tokens": "max_output_tokens"})


def error_shape(request: Request) -> ErrorShape:
    handler = request.scope.get("route_handler")  # absent when no route matched
    return (handler.opt.get("error_shape") if handler is not None else None) or OPENAI_ERRORS


def error_response(request: Request, exc: errors.LlamaApiError,
                   headers: dict[str, str] | None = None) -> Response:
    headers = dict(headers or {})
    if isinstance(exc, errors.Overloaded):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, errors.Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return Response(error_shape(request).body(exc), status_code=exc.status, headers=headers)


def api_error_handler(request: Request, exc: errors.LlamaApiError) -> Response:
    return error_response(request, exc)


def validation_error_handler(request: Request, exc: ValidationException) -> Response:
    """A body msgspec refused: name the field by its path (`messages[0].role`)."""
    problems = exc.extra if isinstance(exc.extra, list) else []
    first = problems[0] if problems and isinstance(problems[0], dict) else {}
    detail = first.get("message") or exc.detail or "invalid"
    key = first.get("key")
    # "data" is the body as a whole; "[...]" stands for a key of a map (`logit_bias[...]`).
    path = None if key in (None, "", "data") else key.replace("[...]", "")
    missing = re.search(r"missing required field `([^`]+)`", detail)
    if missing:
        param = f"{path}.{missing.group(1)}" if path else missing.group(1)
        message = f"`{param}` is required."
    elif path:
        param, message = path, f"Invalid value for `{path}`: {detail[:1].lower()}{detail[1:]}."
    else:
        param, message = None, f"Invalid request body: {detail}"
    return error_response(request, errors.BadRequest(message, param=param, code="invalid_value"))


def undecodable_body_handler(request: Request, exc: UnicodeDecodeError) -> Response:
    # Litestar decodes the JSON body lazily and lets this through as it is.
    return error_response(request, errors.BadRequest(
        f"Invalid request body: not UTF-8 ({exc.reason} at byte {exc.start}).",
        code="invalid_value"))


def too_deep_handler(request: Request, exc: RecursionError) -> Response:
    # msgspec gives up on JSON nested past its depth limit with a RecursionError that
    # Litestar lets through; any other RecursionError is a bug of ours.
    if "deserializing" not in str(exc):
        return internal_error_handler(request, exc)
    return error_response(request, errors.BadRequest(
        "Invalid request body: JSON nested too deeply.", code="invalid_value"))


def http_error_handler(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 404:
        message = f"No route {request.method} {request.url.path}. See /schema for the API."
    else:
        message = exc.detail
    error = errors.HTTPRefusal(message, status=exc.status_code)
    return error_response(request, error, headers=getattr(exc, "headers", None))


def internal_error_handler(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error", exc_info=exc)
    return error_response(request, errors.LlamaApiError(
        f"Internal error ({type(exc).__name__}); see the server log."))


EXCEPTION_HANDLERS = {
    errors.LlamaApiError: api_error_handler,
    ValidationException: validation_error_handler,
    UnicodeDecodeError: undecodable_body_handler,
    RecursionError: too_deep_handler,
    HTTPException: http_error_handler,
    Exception: internal_error_handler,
}
