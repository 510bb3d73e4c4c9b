"""One driver thread that owns a dynamic generator, and per-request queues fed from it.

exllamav2's `ExLlamaV2DynamicGenerator` and exllamav3's `Generator` are not thread-safe, but
the worker calls `generate` from as many threads as the model has slots. So request threads
never touch the generator: they hand a job to the driver, which enqueues it, calls
`iterate()` while any job is alive, and routes each result dict to its request's queue by
the job's `identifier`. Cancellation (a request's `cancelled` event, or an explicit
`cancel`) is applied by the driver between two iterations, that is between tokens.

The generator only needs `enqueue(job)`, `iterate() -> list[dict]` and `cancel(job)`, and
result dicts shaped like the two libraries' (`identifier`, `stage`, `eos`, `text`, ...).
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from llama_api import errors

log = logging.getLogger(__name__)


class _Cancelled:
    def __repr__(self):
        return "CANCELLED"


CANCELLED = _Cancelled()


@dataclass
class Failure:
    """Put on a request's queue when its job failed (or the generator did)."""

    error: BaseException


@dataclass
class Stream:
    key: Any
    job: Any
    cancelled: threading.Event | None
    queue: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)


def generation_failed(exc: BaseException) -> errors.LlamaApiError:
    """A failure while generating is the server's (500), not the request's."""
    if isinstance(exc, errors.LlamaApiError):
        return exc
    return errors.LlamaApiError(f"exllama generation failed: {type(exc).__name__}: {exc}")


class Engine:
    def __init__(self, generator, name: str = "exllama-driver"):
        self.generator = generator
        self._wake = threading.Condition(threading.Lock())
        self._inbox: list[Stream] = []
        self._cancel_keys: list[Any] = []
        self._streams: dict[Any, Stream] = {}
        self._closed = False
        self.iterations = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # Request threads -------------------------------------------------------------------

    def submit(self, job, key, cancelled: threading.Event | None = None) -> Stream:
        stream = Stream(key=key, job=job, cancelled=cancelled)
        with self._wake:
            if self._closed:
                raise errors.BackendUnavailable("the model is unloading")
            self._inbox.append(stream)
            self._wake.notify()
        return stream

    def cancel(self, key) -> None:
        with self._wake:
            self._cancel_keys.append(key)
            self._wake.notify()

    def poke(self) -> None:
        """Wake the driver (after setting a request's cancelled event)."""
        with self._wake:
            self._wake.notify()

    @property
    def active(self) -> int:
        return len(self._streams)

    def close(self, timeout: float = 30.0) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # Driver thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._closed or self._inbox or self._cancel_keys or self._streams):
                    self._wake.wait()
                if self._closed:
                    break
                inbox, self._inbox = self._inbox, []
                cancels, self._cancel_keys = self._cancel_keys, []
            try:
                self._step(inbox, cancels)
            except Exception as exc:  # a bug here must not leave requests waiting forever
                log.exception("exllama driver step failed")
                self._fail_all(exc)
        self._shutdown()

    def _step(self, inbox: list[Stream], cancels: list[Any]) -> None:
        for stream in inbox:
            try:
                self.generator.enqueue(stream.job)
            except Exception as exc:  # noqa: BLE001 - the library's refusal is this request's error
                stream.queue.put(Failure(exc))
                continue
            self._streams[stream.key] = stream
        for key in cancels:
            self._drop(key)
        for key, stream in list(self._streams.items()):
            if stream.cancelled is not None and stream.cancelled.is_set():
                self._drop(key)
        if not self._streams:
            return
        try:
            results = self.generator.iterate()
        except Exception as exc:
            log.exception("exllama generator failed")
            self._fail_all(generation_failed(exc))
            return
        self.iterations += 1
        for result in results:
            key = result.get("identifier")
            stream = self._streams.get(key)
            if stream is None:
                continue
            stage = result.get("stage")
            if stage == "error":  # exllamav3 reaps a failed job and reports it
                del self._streams[key]
                error = result.get("error") or RuntimeError("the job failed")
                stream.queue.put(Failure(generation_failed(error)))
            elif stage == "streaming":
                if result.get("eos"):
                    del self._streams[key]
                stream.queue.put(result)

    def _drop(self, key) -> None:
        stream = self._streams.pop(key, None)
        if stream is None:
            return
        try:
            self.generator.cancel(stream.job)
        except Exception:
            log.exception("cancelling an exllama job failed")
        stream.queue.put(CANCELLED)

    def _fail_all(self, exc: BaseException) -> None:
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            try:
                self.generator.cancel(stream.job)
            except Exception:
                log.debug("cancelling a failed exllama job failed too", exc_info=True)
            stream.queue.put(Failure(exc))

    def _shutdown(self) -> None:
        with self._wake:
            inbox, self._inbox = self._inbox, []
        gone = errors.BackendUnavailable("the model was unloaded")
        for stream in inbox:
            stream.queue.put(Failure(gone))
        self._fail_all(gone)
