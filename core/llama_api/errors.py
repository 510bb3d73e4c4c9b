"""Errors a backend or the core raises; the HTTP layer turns each into an OpenAI error body."""

from __future__ import annotations

from contextlib import contextmanager


class LlamaApiError(Exception):
    """Base class: carries what the OpenAI error body needs."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class BadRequest(LlamaApiError):
    """The request can't be served as sent (bad field, prompt longer than the context)."""

    status = 400
    type = "invalid_request_error"


class ContextLengthExceeded(BadRequest):
    code = "context_length_exceeded"


class NotSupported(BadRequest):
    """The backend can't do this (embeddings on a chat-only model, tools, ...)."""

    code = "not_supported"


class Unauthorized(LlamaApiError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class HTTPRefusal(LlamaApiError):
    """Refused at the HTTP level: no such route, a method it doesn't take, a body too large."""

    type = "invalid_request_error"

    def __init__(self, message: str, *, status: int):
        super().__init__(message)
        self.status = status
        if status >= 500:
            self.type = "server_error"


class Forbidden(LlamaApiError):
    """A valid key, but not one this route takes (an API key on an admin route)."""

    status = 403
    type = "invalid_request_error"
    code = "admin_key_required"


class Conflict(LlamaApiError):
    """The request contradicts the server's state (every worker pinned, a model busy)."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


class ModelNotFound(LlamaApiError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class Overloaded(LlamaApiError):
    status = 429
    type = "rate_limit_error"
    code = "queue_full"

    def __init__(self, message: str, *, retry_after: int = 1, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class BackendUnavailable(LlamaApiError):
    """The backend could not serve: its worker failed to load or died."""

    status = 503
    type = "server_error"
    code = "backend_unavailable"


class ModelLoadError(BackendUnavailable):
    code = "model_load_failed"


class WorkerCrashed(BackendUnavailable):
    code = "worker_crashed"


# The kinds that cross the worker pipe by name.
ERROR_KINDS: dict[str, type[LlamaApiError]] = {
    cls.__name__: cls
    for cls in (
        LlamaApiError,
        BadRequest,
        ContextLengthExceeded,
        NotSupported,
        ModelLoadError,
        BackendUnavailable,
        WorkerCrashed,
    )
}


@contextmanager
def unwrapped():
    """Raise the one error of a task group as itself, so the handlers above still see it."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
