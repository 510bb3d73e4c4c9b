"""Failures in the worker, as the messages that carry them back to the server."""

from __future__ import annotations

import logging

from llama_api import errors
from llama_api.workers import protocol

log = logging.getLogger("llama_api.workers.child")


def error_fields(exc: BaseException) -> dict:
    """kind, message, param and code of a failure, as the server rebuilds its error."""
    if isinstance(exc, errors.LlamaApiError):
        kind = "LlamaApiError"
        for cls in type(exc).__mro__:  # plugin subclasses travel as their nearest core class
            if cls.__name__ in errors.ERROR_KINDS:
                kind = cls.__name__
                break
        return {"kind": kind, "message": exc.message, "param": exc.param, "code": exc.code}
    # A backend bug is the backend failing (503), not the server (500).
    return {"kind": "BackendUnavailable", "code": "backend_error",
            "message": f"the backend failed: {type(exc).__name__}: {exc}"}


def failure(request_id: int, exc: BaseException) -> protocol.Failed:
    if not isinstance(exc, errors.LlamaApiError):
        log.exception("request %s failed", request_id)
    return protocol.Failed(id=request_id, **error_fields(exc))


def load_failure(exc: BaseException) -> protocol.LoadFailed:
    if not isinstance(exc, errors.LlamaApiError):
        log.exception("loading failed")
    fields = error_fields(exc)
    return protocol.LoadFailed(kind=fields["kind"], message=fields["message"])
