"""The one server-sent-events path: every generating route streams through `EventStream`.

A route passes in what differs: how to generate ((index, delta) pairs fed to a callback,
see `choices.generate_choices`) and a `StreamRenderer` that turns them into events of its
API's shape. The path does the rest, the same for every route:

- it waits for the first delta before answering, so that a load failure or a bad prompt gets
  a real HTTP status (raised to the app's exception handlers) instead of an error inside a 200;
  but only for one keep-alive interval: then it answers 200 and, whenever nothing has come
  for an interval (a load, a queue, a long prompt), sends an SSE comment, so that proxies and
  clients with read timeouts keep the connection;
- a client that hangs up, while queued or mid-stream, cancels the generation in the worker;
- an error after the answer started becomes the route's error event, and the stream ends;
- every choice gets a closing delta with a finish_reason, even if the backend sent none
  (clients such as LangChain fail on a stream without one);
- then the renderer's `finish` events (usage, `[DONE]`, `message_stop`, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import anyio
import msgspec
from litestar import Response
from litestar.types import Receive, Scope, Send

from llama_api import errors
from llama_api.api.choices import Choice, Emit
from llama_api.api.http import wait_for_disconnect
from llama_api.contract.records import Delta

log = logging.getLogger("llama_api.api.streaming")


class Event(msgspec.Struct, frozen=True):
    """One server-sent event: `data` (an object as JSON, or a string as it is), maybe named."""

    data: dict[str, Any] | str
    name: str | None = None

    def encode(self) -> bytes:
        data = self.data.encode() if isinstance(self.data, str) else msgspec.json.encode(self.data)
        head = b"event: " + self.name.encode() + b"\n" if self.name else b""
        return head + b"data: " + data + b"\n\n"


class StreamRenderer(Protocol):
    """What a route streams: events before any delta, for each delta, and at the end."""

    def start(self) -> Iterable[Event]: ...

    def delta(self, index: int, delta: Delta) -> Iterable[Event]: ...

    def finish(self, choices: list[Choice]) -> Iterable[Event]: ...


class ErrorShape(Protocol):
    """How a route's API spells an error: as a JSON body, and as a stream event."""

    def body(self, exc: errors.LlamaApiError) -> dict[str, Any]: ...

    def event(self, exc: errors.LlamaApiError) -> Event: ...


# Runs a request's generation, handing each choice's deltas to `emit` as they come.
RunGeneration = Callable[[Emit], Awaitable[None]]

_END = object()  # the generation finished
_QUIET = object()  # nothing came for a keep-alive interval
KEEPALIVE_COMMENT = b": keep-alive\n\n"  # SSE clients skip lines that start with a colon
DEFAULT_KEEPALIVE = 5.0  # seconds; the routes pass the server's --keepalive
HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
           (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


class EventStream(Response):
    """A route's streamed answer; see the module docstring for what it does."""

    def __init__(self, generate: RunGeneration, choices: int, renderer: StreamRenderer,
                 error_shape: ErrorShape, keepalive: float = DEFAULT_KEEPALIVE):
        super().__init__(content=None, media_type="text/event-stream")
        self.generate = generate
        self.choices = choices
        self.renderer = renderer
        self.error_shape = error_shape
        self.keepalive = keepalive  # seconds, 0 = never
        self._heard = 0.0  # when the last item came out of the stream (anyio's clock)

    def to_asgi_response(self, *args, **kwargs):  # Litestar sends what this returns
        return self.serve

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        choices = [Choice(i) for i in range(self.choices)]
        interval = self.keepalive
        with errors.unwrapped():
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(wait_for_disconnect, receive, task_group.cancel_scope)
                outbox, inbox = anyio.create_memory_object_stream(16)
                self._heard = anyio.current_time()
                if interval > 0:
                    task_group.start_soon(self._keep_alive, outbox.clone(), interval)
                task_group.start_soon(self._produce, outbox)
                item = await self._receive(inbox)
                if isinstance(item, errors.LlamaApiError):
                    raise item  # nothing sent yet: the exception handlers answer with a status
                await send({"type": "http.response.start", "status": 200, "headers": HEADERS})

                async def emit(events: Iterable[Event]) -> None:
                    body = b"".join(event.encode() for event in events)
                    if body:
                        await send({"type": "http.response.body", "body": body,
                                    "more_body": True})

                await emit(self.renderer.start())
                while item is not _END:
                    if item is _QUIET:
                        await send({"type": "http.response.body", "body": KEEPALIVE_COMMENT,
                                    "more_body": True})
                    elif isinstance(item, errors.LlamaApiError):
                        log.warning("stream failed: %s", item.message)
                        await emit([self.error_shape.event(item)])
                        break
                    else:
                        index, delta = item
                        choices[index].add(delta)
                        await emit(self.renderer.delta(index, delta))
                    item = await self._receive(inbox)
                else:
                    for choice in choices:
                        if choice.finish_reason is None:
                            closing = Delta(finish_reason="stop")
                            choice.add(closing)
                            await emit(self.renderer.delta(choice.index, closing))
                    await emit(self.renderer.finish(choices))
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                task_group.cancel_scope.cancel()

    async def _receive(self, inbox):
        item = await inbox.receive()
        self._heard = anyio.current_time()
        return item

    async def _keep_alive(self, outbox, interval: float) -> None:
        """Put _QUIET in the stream whenever nothing has come out of it for `interval`."""
        async with outbox:
            while True:
                await anyio.sleep_until(self._heard + interval)
                if anyio.current_time() >= self._heard + interval:
                    self._heard = anyio.current_time()
                    await outbox.send(_QUIET)

    async def _produce(self, outbox) -> None:
        async with outbox:
            async def emit(index: int, delta: Delta) -> None:
                await outbox.send((index, delta))

            try:
                await self.generate(emit)
            except errors.LlamaApiError as exc:
                await outbox.send(exc)
            else:
                await outbox.send(_END)
