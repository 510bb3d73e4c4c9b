"""The worker process's main loop: it hosts one model of one plugin and serves it.

Run as `python -m llama_api.workers.child PLUGIN [MODULE:ATTR]` (the plugin's entry point,
which spares the worker a scan of every installed distribution). Frames come in on stdin
and go out on a duplicate of the original stdout; fd 1 itself is pointed at stderr before
any backend is imported, so C libraries that print can't corrupt the channel.

Threads in a worker:
- the main thread reads messages (`ChildWorker.serve`) and never runs model code: a load
  runs there before any request can arrive, everything else goes to the pool;
- the request pool (`request_N`, as many threads as the model has slots) runs the hooks,
  one request per thread; a backend that batches (llama.cpp's batch engine) runs its own
  compute thread behind them;
- the outbox thread writes coalesced deltas (`llama_api.workers.outbox`);
- the lifeline thread ends the process when the server dies (`llama_api.workers.lifeline`).

The worker hosts exactly one plugin, so every per-model hook it calls is that plugin's.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from array import array
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from llama_api import errors
from llama_api.contract.records import LoadContext, LoadedModel
from llama_api.workers import protocol
from llama_api.workers.channel import Channel, LogLineFormatter
from llama_api.workers.failures import failure, load_failure
from llama_api.workers.lifeline import watch_parent
from llama_api.workers.outbox import Outbox

log = logging.getLogger("llama_api.workers.child")


def vectors_to_bytes(embeddings) -> tuple[bytes, int, int]:
    """Rows of floats (lists or a 2-D numpy array) as little-endian float32 bytes, with the
    row count and width: one copy on the way to the pipe."""
    if hasattr(embeddings, "astype"):  # numpy, without importing it here
        matrix = embeddings.astype("<f4")
        if matrix.ndim != 2:
            raise errors.LlamaApiError(f"backend returned a {matrix.ndim}-D embedding array")
        return matrix.tobytes(), matrix.shape[0], matrix.shape[1]
    rows = [list(map(float, row)) for row in embeddings]
    dims = len(rows[0]) if rows else 0
    if any(len(row) != dims for row in rows):
        raise errors.LlamaApiError("backend returned vectors of different lengths")
    data = array("f")
    for row in rows:
        data.extend(row)
    if sys.byteorder != "little":
        data.byteswap()
    return data.tobytes(), len(rows), dims


class ChildWorker:
    """One model of one plugin, served over the pipe: load, then requests until Shutdown.

    `loaded` is what the plugin's `load_model` returned; its `model` is handed to every
    per-model hook. A hook that returns None, or that the plugin lacks, is a capability the
    model doesn't have: the request gets `NotSupported` naming the model.
    """

    def __init__(self, plugin_name: str, channel: Channel, entry_point: str | None = None):
        from llama_api.workers.plugins import Plugins

        self.plugins = Plugins(only=plugin_name, value=entry_point)
        if plugin_name in self.plugins.broken:
            raise errors.ModelLoadError(
                f"plugin {plugin_name} can't be used: {self.plugins.broken[plugin_name]}")
        self.plugin_name = plugin_name
        try:  # before any Load: a spare worker does it ahead of the request
            self.plugins.hook.prepare_worker()
        except Exception:  # load_model then says what is wrong
            log.exception("plugin %s could not prepare the worker", plugin_name)
        self.channel = channel
        self.loaded: LoadedModel | None = None
        self.model_id = ""
        self.cancels: dict[int, threading.Event] = {}
        self.info: dict = {}  # what the server was last told of the model's info
        self.info_lock = threading.Lock()
        self.pool: ThreadPoolExecutor | None = None
        self.outbox = Outbox(channel)

    # -- load ------------------------------------------------------------------------

    def load(self, message: protocol.Load) -> None:
        context = LoadContext(
            n_threads=message.n_threads,
            progress=lambda text, fraction=None: self.channel.send(
                protocol.Progress(message=text, fraction=fraction)
            ),
        )
        started = time.perf_counter()
        try:
            loaded = self.plugins.hook.load_model(spec=message.spec, context=context)
            if not isinstance(loaded, LoadedModel):
                raise errors.ModelLoadError(
                    f"plugin {self.plugin_name} did not load {message.spec.id}: its load_model "
                    f"returned {type(loaded).__name__}, not a LoadedModel")
        except Exception as exc:  # noqa: BLE001 - any load failure is the server's 503
            self.channel.send(load_failure(exc))
            return
        self.loaded = loaded
        self.model_id = message.spec.id
        slots = max(1, int(message.spec.slots or loaded.slots or 1))
        self.pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="request")
        info = dict(loaded.info)
        info.setdefault("load_seconds", round(time.perf_counter() - started, 3))
        self.info = info
        self.channel.send(protocol.Loaded(slots=slots, info=info))

    def report_info(self) -> None:
        """Tell the server when the model's info changed (after a request, never per token)."""
        with self.info_lock:
            current = {**self.info, **self.loaded.info}
            if current != self.info:
                self.info = current
                self.channel.send(protocol.InfoChanged(info=current))

    # -- requests ----------------------------------------------------------------------

    def refused(self, what: str) -> errors.NotSupported:
        """The one refusal for a capability the model lacks: a 400 naming the model."""
        return errors.NotSupported(f"model {self.model_id} {what}", param="model")

    def call(self, hook: str, what: str, **kwargs):
        """The plugin's per-model hook on the loaded model; a refusal when it has none or
        it returned None."""
        result = getattr(self.plugins.hook, hook)(model=self.loaded.model, **kwargs)
        if result is None:
            raise self.refused(what)
        return result

    def run_generate(self, message: protocol.Generate) -> None:
        cancelled = self.cancels[message.id]
        try:
            stream = self.call("generate", "does not generate text (its backend can't)",
                               request=message.request, cancelled=cancelled)
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
        result = self.call("embed", "does not make embeddings; use an embedding model",
                           request=message.request)
        data, count, dims = vectors_to_bytes(result.embeddings)
        if result.batch_size:
            log.debug("request %s: %d vector(s), computed in a batch of %d rows",
                      message.id, count, result.batch_size)
        return protocol.Embedded(id=message.id, data=data, count=count, dims=dims,
                                 prompt_tokens=result.prompt_tokens)

    NO_TOKENIZER = "has no tokenizer this server can use (its backend does not tokenize)"

    def tokenized(self, message: protocol.Tokenize) -> protocol.Tokenized:
        result = self.call("tokenize", self.NO_TOKENIZER, request=message.request)
        return protocol.Tokenized(id=message.id, result=result)

    def detokenized(self, message: protocol.Detokenize) -> protocol.Detokenized:
        text = self.call("detokenize", self.NO_TOKENIZER, tokens=message.tokens)
        return protocol.Detokenized(id=message.id, text=text)

    def reranked(self, message: protocol.Rerank) -> protocol.Reranked:
        result = self.call("rerank", "can't rerank (it is not a reranker or cross-encoder)",
                           request=message.request)
        if len(result.scores) != len(message.request.documents):
            raise errors.BackendUnavailable(
                f"the backend scored {len(result.scores)} of "
                f"{len(message.request.documents)} documents", code="backend_error")
        return protocol.Reranked(id=message.id, result=result)

    def answer(self, request_id: int, compute) -> None:
        """Send `compute()`'s message, or the failure that it raised."""
        try:
            self.channel.send(compute())
        except Exception as exc:  # noqa: BLE001 - every failure goes back to its request
            self.channel.send(failure(request_id, exc))

    # -- the loop ----------------------------------------------------------------------

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
                    if self.loaded is not None and self.loaded.thread_budget is not None:
                        self.loaded.thread_budget(message.threads)
        if self.pool is not None:
            for event in list(self.cancels.values()):
                event.set()
            self.pool.shutdown(wait=True)
        self.outbox.close()
        if self.loaded is not None:
            try:
                self.plugins.hook.unload_model(model=self.loaded.model)
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
        worker = ChildWorker(plugin_name, channel, entry_point)
    except errors.LlamaApiError as exc:
        channel.send(load_failure(exc))
        return
    worker.serve()


if __name__ == "__main__":
    main()
