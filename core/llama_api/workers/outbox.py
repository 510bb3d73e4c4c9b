"""Deltas on their way to the pipe: coalesced per stream, written by one thread."""

from __future__ import annotations

import logging
import threading
import time

from llama_api.contract.records import Delta
from llama_api.workers import protocol
from llama_api.workers.channel import Channel

log = logging.getLogger("llama_api.workers.child")

# Coalesce deltas into one frame per this many seconds: one frame per token costs
# the compute threads a few percent.
FLUSH_INTERVAL = 0.025


def merge(deltas: list[Delta]) -> list[Delta]:
    """Join consecutive text-only deltas so a frame carries few, larger pieces."""
    merged: list[Delta] = []
    for delta in deltas:
        last = merged[-1] if merged else None
        if (
            last is not None
            and last.finish_reason is None
            and last.tool_calls is None
            and delta.tool_calls is None
            and (last.logprobs is None) == (delta.logprobs is None)
            and not (last.text and delta.reasoning)  # a delta's reasoning precedes its text
        ):
            last.reasoning += delta.reasoning
            last.text += delta.text
            if delta.logprobs is not None:
                last.logprobs.extend(delta.logprobs)
            last.finish_reason = delta.finish_reason
            last.stop_sequence = delta.stop_sequence
            last.usage = delta.usage
        else:
            merged.append(Delta(
                text=delta.text,
                reasoning=delta.reasoning,
                logprobs=list(delta.logprobs) if delta.logprobs is not None else None,
                tool_calls=delta.tool_calls,
                finish_reason=delta.finish_reason,
                stop_sequence=delta.stop_sequence,
                usage=delta.usage,
            ))
    return merged


class Outbox:
    """Every stream's deltas on their way to the pipe, written by one thread per worker.

    A stream's first delta (and the first after a pause of FLUSH_INTERVAL) goes out at once,
    from the thread that made it. Later ones wait for the next tick, when the writer sends
    every stream's pending deltas in one write: at most one frame per stream per tick, and
    no delta waits longer than a tick, even while its backend stalls.
    """

    def __init__(self, channel: Channel, interval: float = FLUSH_INTERVAL):
        self._channel = channel
        self._interval = interval
        self._pending: dict[int, list[Delta]] = {}
        self._last_sent: dict[int, float] = {}  # request id -> when its last frame went out
        self._wake = threading.Condition()
        self._closed = False
        self._writer = threading.Thread(target=self._write_ticks, name="outbox", daemon=True)
        self._writer.start()

    def add(self, request_id: int, delta: Delta) -> None:
        with self._wake:
            pending = self._pending.get(request_id)
            if pending is not None:
                pending.append(delta)
                return
            last = self._last_sent.get(request_id)
            if last is None or time.monotonic() - last >= self._interval:
                self._send([(request_id, [delta])])
                return
            self._pending[request_id] = [delta]
            # The writer may be waiting for a later tick (another stream's, due after this
            # one's): it works out the next one again.
            self._wake.notify()

    def finish(self, request_id: int, failed: protocol.Failed | None = None) -> None:
        """The stream's last frame (done), or its failure (pending deltas are dropped)."""
        with self._wake:
            pending = self._pending.pop(request_id, [])
            self._last_sent.pop(request_id, None)
            if failed is not None:
                self._channel.send(failed)
            else:
                self._channel.send(protocol.Deltas(id=request_id, deltas=merge(pending),
                                                   done=True))

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._writer.join(timeout=5)

    def _send(self, batches: list[tuple[int, list[Delta]]]) -> None:
        # under self._wake: a stream's frames leave in order
        now = time.monotonic()
        for request_id, _deltas in batches:
            self._last_sent[request_id] = now
        self._channel.send_all([protocol.Deltas(id=request_id, deltas=merge(deltas))
                                for request_id, deltas in batches])

    def _write_ticks(self) -> None:
        with self._wake:
            while not self._closed:
                if not self._pending:
                    self._wake.wait()
                    continue
                due = min(self._last_sent.get(request_id, 0.0)
                          for request_id in self._pending) + self._interval
                wait = due - time.monotonic()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                batches = list(self._pending.items())
                self._pending.clear()
                try:
                    self._send(batches)
                except OSError:  # the server is gone; the lifeline ends this process
                    log.warning("could not write to the server")
