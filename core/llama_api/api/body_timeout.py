"""A bound on how long the server waits for each piece of a request's body (--body-timeout).

uvicorn waits for a body for ever: a client that sends a byte at a time, or stops mid-body,
holds its connection (and a route's task) open. This ASGI middleware bounds each wait for an
`http.request` message while the body is incomplete. When a wait runs out before the answer
started, the route's `receive` raises `BodyTimeout`, so that the app's exception handlers
answer 408 in the route's error shape; the answer says `Connection: close`, so that the
server closes the connection after it. Once the body is whole, `receive` only waits for the
client to go away, and is left unbounded.
"""

from __future__ import annotations

import anyio
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from llama_api import errors

DEFAULT_BODY_TIMEOUT = 30.0  # seconds


class BodyTimeout(errors.HTTPRefusal):
    code = "body_timeout"

    def __init__(self, seconds: float):
        super().__init__(f"The request body did not arrive in time: nothing came for "
                         f"{seconds:g} s (--body-timeout).", status=408)


class BodyTimeoutMiddleware:
    """`seconds`: the longest wait for the next piece of a body; 0 = no bound."""

    def __init__(self, app: ASGIApp, seconds: float = DEFAULT_BODY_TIMEOUT):
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.seconds:
            await self.app(scope, receive, send)
            return
        body_done = answer_started = timed_out = False

        async def bounded_receive() -> Message:
            nonlocal body_done, timed_out
            if body_done:
                return await receive()
            with anyio.move_on_after(self.seconds):
                message = await receive()
                body_done = message["type"] != "http.request" or not message.get("more_body")
                return message
            timed_out = True
            if answer_started:  # too late for a status: the route sees the client go
                return {"type": "http.disconnect"}
            raise BodyTimeout(self.seconds)

        async def closing_send(message: Message) -> None:
            nonlocal answer_started
            if message["type"] == "http.response.start":
                answer_started = True
                if timed_out:
                    message = {**message,
                               "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, bounded_receive, closing_send)
