"""Lifecycle events (a model loading, loaded, unloaded, evicted, crashed, ...), published
by the scheduler and read in this process: by the metrics (listeners, called at once) and by
`GET /admin/events` streams (subscribers, each with its own bounded queue).

A subscriber that falls behind loses the oldest events rather than slowing the server.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    kind: str  # "loading", "loaded", "load_failed", "unloaded", "evicted", "crashed", "pinned", ...
    model: str
    fields: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "model": self.model, "time": self.time, **self.fields}


class Subscription:
    """The events published since `subscribe`, oldest first, at most `limit` kept."""

    def __init__(self, limit: int):
        self._events: deque[Event] = deque(maxlen=limit)
        self._arrived = anyio.Event()
        self.dropped = 0

    def _put(self, event: Event) -> None:
        if len(self._events) == self._events.maxlen:
            self.dropped += 1
        self._events.append(event)
        self._arrived.set()

    async def next(self) -> Event:
        while not self._events:
            await self._arrived.wait()
            self._arrived = anyio.Event()
        return self._events.popleft()

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            yield await self.next()


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[Callable[[Event], None]] = []
        self._subscriptions: set[Subscription] = set()

    def listen(self, listener: Callable[[Event], None]) -> None:
        """Call `listener(event)` for every event, in the publisher's task: keep it quick."""
        self._listeners.append(listener)

    @asynccontextmanager
    async def subscribe(self, limit: int = 256):
        subscription = Subscription(limit)
        self._subscriptions.add(subscription)
        try:
            yield subscription
        finally:
            self._subscriptions.discard(subscription)

    def publish(self, kind: str, model: str, **fields: Any) -> None:
        event = Event(kind, model, fields)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # a listener's bug must not break the scheduler
                log.exception("event listener failed on %s", kind)
        for subscription in self._subscriptions:
            subscription._put(event)
