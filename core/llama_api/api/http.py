"""Small HTTP helpers the routes and the streaming path share."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import msgspec
from litestar import HttpMethod, Request, Response
from litestar.types import Receive

from llama_api import errors

log = logging.getLogger("llama_api.api")

T = TypeVar("T")

# The routes probed by load balancers and clients (Claude Code sends `HEAD /` first): HEAD
# answers as GET does, without the body.
GET_OR_HEAD = [HttpMethod.GET, HttpMethod.HEAD]


def request_key(request: Request) -> bytes | None:
    """The API key the app's guard let this request in with; None when the server has none."""
    return request.state.get("api_key")


def json_response(body: dict) -> Response:
    return Response(msgspec.json.encode(body), media_type="application/json")


async def wait_for_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    """Cancel `scope` (and with it the worker's generation) when the client goes away."""
    # The body has been read, so the next message can only be the disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass
    log.info("client went away: cancelling its request")
    scope.cancel()


async def until_done_or_disconnected(request: Request, work: Callable[[], Awaitable[T]]) -> T:
    """Return `await work()`; if the client goes away first, cancel it and raise
    ClientGone (a client that hangs up while queued gives up its place)."""
    result: list[T] = []
    with errors.unwrapped():
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(wait_for_disconnect, request.receive, task_group.cancel_scope)
            result.append(await work())
            task_group.cancel_scope.cancel()
    if not result:
        raise ClientGone()
    return result[0]


class ClientGone(errors.LlamaApiError):
    """Nobody is left to answer; the server sends nothing more."""

    status = 499
    type = "client_gone"

    def __init__(self) -> None:
        super().__init__("The client closed the connection.")
