"""The worker process: loads one model through one plugin and serves it over a pipe.

Run as `python -m llama_api.workers.child PLUGIN [MODULE:ATTR]` (the plugin's entry point, which
spares the worker a scan of every installed distribution). Frames come in on stdin and go out on a
duplicate of the original stdout; fd 1 itself is pointed at stderr before any backend
is imported, so C libraries that print can't corrupt the channel.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from array import array
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from llama_api import errors
from llama_api.contract.records import Delta, LoadContext
from llama_api.workers import protocol
from llama_api.workers.lifeline import watch_parent

log = logging.getLogger("llama_api.workers.child")

# Coalesce deltas into one frame per this many seconds: one frame per token costs
# the compute threads a few percent (see shared/MODELS.md).
FLUSH_INTERVAL = 0.025


class Channel:
    """Reads frames from a file descriptor and writes frames to another, thread-safely."""

    def __init__(self, read_fd: int, write_fd: int):
        self._frames = protocol.read_frames(lambda size: os.read(read_fd, size))
        self._write_fd = write_fd
        self._lock = threading.Lock()

    def send(self, message) -> None:
        self.send_all([message])

    def send_all(self, messages: list) -> None:
        """The messages' frames in one write (one wake-up of the server for all of them)."""
        frames = [protocol.encode(message) for message in messages]
        with self._lock:
            view = memoryview(frames[0] if len(frames) == 1 else b"".join(frames))
            while view:
                written = os.write(self._write_fd, view)
                view = view[written:]

    def receive(self) -> protocol.ToWorker | None:
        """The next message, or None once the server closed the pipe."""
        try:
            body = next(self._frames, None)
        except protocol.TruncatedFrame as exc:  # the server died mid-write: nothing to answer
            log.warning("%s; stopping", exc)
            return None
        return None if body is None else protocol.to_worker_decoder.decode(body)


class LogLineFormatter(logging.Formatter):
    """One stderr line per record, carrying its level for the server (protocol.LOG_MARK)."""

    def __init__(self):
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return protocol.format_log_line(record.levelno, super().format(record))


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


def vectors_to_bytes(embeddings, dimensions: int | None = None) -> tuple[bytes, int, int]:
    """Rows of floats (lists or a numpy array) as little-endian float32 bytes, shortened
    to `dimensions` values (see `shortened`)."""
    if hasattr(embeddings, "astype"):  # numpy, without importing it here
        matrix = embeddings.astype("<f4")
        if matrix.ndim != 2:
            raise errors.LlamaApiError(f"backend returned a {matrix.ndim}-D embedding array")
        if shortened(dimensions, matrix.shape[1]):
            matrix = matrix[:, :dimensions]
            norms = (matrix * matrix).sum(axis=1, keepdims=True) ** 0.5
            matrix = (matrix / norms.clip(min=1e-12)).astype("<f4")
        return matrix.tobytes(), matrix.shape[0], matrix.shape[1]
    rows = [list(map(float, row)) for row in embeddings]
    dims = len(rows[0]) if rows else 0
    if any(len(row) != dims for row in rows):
        raise errors.LlamaApiError("backend returned vectors of different lengths")
    if rows and shortened(dimensions, dims):
        rows, dims = [unit(row[:dimensions]) for row in rows], dimensions
    data = array("f")
    for row in rows:
        data.extend(row)
    if sys.byteorder != "little":
        data.byteswap()
    return data.tobytes(), len(rows), dims


def shortened(dimensions: int | None, width: int) -> bool:
    """Whether the vectors are cut to `dimensions` values (each then L2-renormalized, as
    OpenAI shortens its embeddings). Decided here, for every backend: more than the
    model's `width` is a 400 naming it; the HTTP edge checked `dimensions` >= 1."""
    if dimensions is not None and dimensions > width:
        raise errors.BadRequest(f"`dimensions` is {dimensions}, but this model makes "
                                f"{width}-dimensional vectors.", param="dimensions")
    return dimensions is not None and dimensions < width


def unit(row: list[float]) -> list[float]:
    norm = math.sqrt(sum(value * value for value in row))
    return [value / norm for value in row] if norm > 0 else row


class Worker:
    def __init__(self, plugin_name: str, channel: Channel, entry_point: str | None = None):
        from llama_api.workers.plugins import Plugins

        self.plugins = Plugins(only=plugin_name, value=entry_point)
        if plugin_name in self.plugins.broken:
            raise errors.ModelLoadError(
                f"plugin {plugin_name} failed to import: {self.plugins.broken[plugin_name]}"
            )
        try:  # before any Load: a spare worker does it ahead of the request
            self.plugins.hook.prepare_worker()
        except Exception:  # load_model then says what is wrong
            log.exception("plugin %s could not prepare the worker", plugin_name)
        self.channel = channel
        self.model = None
        self.model_id = ""
        self.cancels: dict[int, threading.Event] = {}
        self.info: dict = {}  # what the server was last told of the model's info
        self.info_lock = threading.Lock()
        self.pool: ThreadPoolExecutor | None = None
        self.outbox = Outbox(channel)

    def load(self, message: protocol.Load) -> None:
        context = LoadContext(
            n_threads=message.n_threads,
            progress=lambda text, fraction=None: self.channel.send(
                protocol.Progress(message=text, fraction=fraction)
            ),
        )
        started = time.perf_counter()
        try:
            model = self.plugins.hook.load_model(spec=message.spec, context=context)
        except Exception as exc:  # noqa: BLE001 - any load failure is the server's 503
            self.channel.send(load_failure(exc))
            return
        if model is None:
            self.channel.send(load_failure(errors.ModelLoadError(
                f"no installed plugin loads backend {message.spec.backend!r}"
            )))
            return
        self.model = model
        self.model_id = message.spec.id
        slots = max(1, int(message.spec.slots or getattr(model, "slots", 1) or 1))
        self.pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="request")
        info = dict(getattr(model, "info", {}) or {})
        info.setdefault("load_seconds", round(time.perf_counter() - started, 3))
        self.info = info
        self.channel.send(protocol.Loaded(slots=slots, info=info))

    def report_info(self) -> None:
        """Tell the server when the model's info changed (after a request, never per token)."""
        with self.info_lock:
            current = {**self.info, **(getattr(self.model, "info", None) or {})}
            if current != self.info:
                self.info = current
                self.channel.send(protocol.InfoChanged(info=current))

    def run_generate(self, message: protocol.Generate) -> None:
        cancelled = self.cancels[message.id]
        try:
            stream = self.plugins.hook.generate(
                model=self.model, request=message.request, cancelled=cancelled
            )
            if stream is None:
                raise errors.NotSupported("this model does not generate text")
            for delta in stream:
                if cancelled.is_set():
                    close = getattr(stream, "close", None)
                    if close is not None:
                        close()
                    break
                self.outbox.add(message.id, delta)
            self.outbox.finish(message.id)
        except Exception as exc:  # noqa: BLE001 - a backend bug fails its request, not the worker
            self.outbox.finish(message.id, failure(message.id, exc))
        finally:
            self.cancels.pop(message.id, None)
            self.report_info()

    def embedded(self, message: protocol.Embed) -> protocol.Embedded:
        result = self.plugins.hook.embed(model=self.model, request=message.request)
        if result is None:
            raise errors.NotSupported("this model does not make embeddings")
        data, count, dims = vectors_to_bytes(result.embeddings, message.request.dimensions)
        if result.batch_size:
            log.debug("request %s: %d vector(s), computed in a batch of %d rows",
                      message.id, count, result.batch_size)
        return protocol.Embedded(id=message.id, data=data, count=count, dims=dims,
                                 prompt_tokens=result.prompt_tokens)

    def answer(self, request_id: int, compute) -> None:
        """Send `compute()`'s message, or the failure that it raised."""
        try:
            self.channel.send(compute())
        except Exception as exc:  # noqa: BLE001 - every failure goes back to its request
            self.channel.send(failure(request_id, exc))

    def no_tokenizer(self) -> errors.NotSupported:
        return errors.NotSupported(f"model {self.model_id} has no tokenizer this server can "
                                   "use (its backend does not tokenize)", param="model")

    def tokenized(self, message: protocol.Tokenize) -> protocol.Tokenized:
        result = self.plugins.hook.tokenize(model=self.model, request=message.request)
        if result is None:
            raise self.no_tokenizer()
        return protocol.Tokenized(id=message.id, result=result)

    def detokenized(self, message: protocol.Detokenize) -> protocol.Detokenized:
        text = self.plugins.hook.detokenize(model=self.model, tokens=message.tokens)
        if text is None:
            raise self.no_tokenizer()
        return protocol.Detokenized(id=message.id, text=text)

    def reranked(self, message: protocol.Rerank) -> protocol.Reranked:
        result = self.plugins.hook.rerank(model=self.model, request=message.request)
        if result is None:
            raise errors.NotSupported(f"model {self.model_id} can't rerank (it is not a "
                                      "reranker or cross-encoder)", param="model")
        if len(result.scores) != len(message.request.documents):
            raise errors.BackendUnavailable(
                f"the backend scored {len(result.scores)} of "
                f"{len(message.request.documents)} documents", code="backend_error")
        return protocol.Reranked(id=message.id, result=result)

    def serve(self) -> None:
        while True:
            message = self.channel.receive()
            match message:
                case None | protocol.Shutdown():
                    break
                case protocol.Load():
                    self.load(message)
                case protocol.Generate():
                    self.cancels[message.id] = threading.Event()
                    self.pool.submit(self.run_generate, message)
                case protocol.Embed():
                    self.pool.submit(self.answer, message.id, partial(self.embedded, message))
                case protocol.Tokenize():
                    self.pool.submit(self.answer, message.id, partial(self.tokenized, message))
                case protocol.Detokenize():
                    self.pool.submit(self.answer, message.id, partial(self.detokenized, message))
                case protocol.Rerank():
                    self.pool.submit(self.answer, message.id, partial(self.reranked, message))
                case protocol.Cancel():
                    event = self.cancels.get(message.id)
                    if event is not None:
                        event.set()
                case protocol.ThreadBudget():
                    budget = getattr(self.model, "thread_budget", None)
                    if callable(budget):  # backends that choose their threads at run time
                        budget(message.threads)
        if self.pool is not None:
            for event in list(self.cancels.values()):
                event.set()
            self.pool.shutdown(wait=True)
        self.outbox.close()
        if self.model is not None:
            try:
                self.plugins.hook.unload_model(model=self.model)
            except Exception:
                log.exception("unload failed")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    plugin_name = argv[0]
    entry_point = argv[1] if len(argv) > 1 else None  # "module:attr", when the server knows it
    watch_parent()  # first: a worker never outlives its server, even mid-load
    # Keep the protocol on a private copy of stdout; anything printed goes to stderr.
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogLineFormatter())
    level = logging.getLevelName(os.environ.get("LLAMA_API_WORKER_LOG_LEVEL", "INFO").upper())
    logging.basicConfig(level=level if isinstance(level, int) else logging.INFO,
                        handlers=[handler])
    # Python's warnings and uncaught exceptions go through logging too, with their level.
    logging.captureWarnings(True)
    sys.excepthook = lambda *exc_info: log.critical("the worker failed", exc_info=exc_info)
    threading.excepthook = lambda hook: log.error(
        "thread %s failed", hook.thread.name if hook.thread else "?",
        exc_info=(hook.exc_type, hook.exc_value, hook.exc_traceback))
    channel = Channel(read_fd=0, write_fd=protocol_fd)
    try:
        worker = Worker(plugin_name, channel, entry_point)
    except errors.LlamaApiError as exc:
        channel.send(load_failure(exc))
        return
    worker.serve()


if __name__ == "__main__":
    main()
