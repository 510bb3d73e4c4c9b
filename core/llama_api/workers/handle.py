"""The server's side of a worker: start the process, talk to it, stop it for good.

A worker that stops answering is killed: one that sends nothing for a request during
`request_timeout` seconds (counted from when the request was sent, so a queued request
doesn't count; every frame restarts it, so a slow generation that progresses is never
killed), or whose load takes longer than `load_timeout`. Its requests then fail with 503
`worker_timeout`, and the scheduler's crash path frees the model.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import subprocess
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import msgspec
from anyio.abc import TaskGroup

from llama_api import errors
from llama_api.contract.records import (
    Delta,
    EmbedRequest,
    GenerateRequest,
    ModelSpec,
    RerankRequest,
    RerankResult,
    TokenizeRequest,
    TokenizeResult,
)
from llama_api.workers import protocol
from llama_api.workers.plugins import entry_point_value

log = logging.getLogger("llama_api.workers.handle")

# The server's own secrets, kept out of every worker (where a backend's traceback or
# environment dump could show them). HF_TOKEN stays: a backend may download from the Hub.
SERVER_SECRETS = ("LLAMA_API_KEYS", "LLAMA_API_ADMIN_KEY")


OpenProcess = Callable[[list[str], dict[str, str]], Awaitable[anyio.abc.Process]]


async def open_local_process(command: list[str], worker_env: dict[str, str]) -> anyio.abc.Process:
    """The worker as a child process of the server, with piped stdin, stdout and stderr; its
    environment is the server's, less the server's secrets, plus `worker_env` (where the
    server's environment doesn't set those names already)."""
    env = {name: value for name, value in os.environ.items() if name not in SERVER_SECRETS}
    for name, value in worker_env.items():
        env.setdefault(name, value)
    return await anyio.open_process(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=env)


def error_from(failed: protocol.Failed) -> errors.LlamaApiError:
    cls = errors.ERROR_KINDS.get(failed.kind, errors.LlamaApiError)
    return cls(failed.message, param=failed.param, code=failed.code)


class WorkerHandle:
    """The server's handle on one worker process (one model): start it, send it requests
    (multiplexed over its pipes by id), read its answers, stop it. `child.ChildWorker` is the
    other end."""

    def __init__(self, spec: ModelSpec, n_threads: int, on_exit: Callable[[WorkerHandle], None],
                 open_process: OpenProcess | None = None, node: str = ""):
        self.spec = spec
        # How the process starts: here (the default), or on a node of a Ray cluster
        # (`llama_api.cluster`), named by `node`; both give the same pipes.
        self.open_process = open_process or open_local_process
        self.node = node
        self.n_threads = n_threads
        self.on_exit = on_exit
        self.slots = 1
        self.info: dict = {}
        self.progress: protocol.Progress | None = None  # the latest report while loading
        self.thread_budget = n_threads  # the cores it was last told it may use
        self.last_lines: deque[str] = deque(maxlen=10)  # what it printed last (crash reports)
        self._stderr_done = anyio.Event()
        self.pid: int | None = None
        self.alive = False
        self._process: anyio.abc.Process | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, anyio.abc.ObjectSendStream] = {}
        self._loaded = anyio.Event()
        self._load_error: errors.LlamaApiError | None = None
        self._exited = anyio.Event()
        # Why the server killed it (a timeout, its memory), if it did: its requests' error.
        self._killed_for: errors.WorkerCrashed | None = None
        # Seconds; 0 = no limit. The scheduler sets them from its settings.
        self.request_timeout = 0.0  # a request may wait this long for the worker's next frame
        self.load_timeout = 0.0  # a load may take this long
        self.log = logging.getLogger(f"llama_api.workers.child.{spec.id}")

    # -- lifecycle -------------------------------------------------------------------

    @property
    def local(self) -> bool:
        """Whether the process runs on this machine (its pid is one of ours)."""
        return not self.node

    @classmethod
    def spare(cls, plugin: str, n_threads: int, on_exit: Callable[[WorkerHandle], None]):
        """A worker for `plugin` with no model yet: `spawn` it now (the interpreter starts
        and imports the plugin's libraries), `load(spec)` it when a model is asked for."""
        return cls(ModelSpec(id=f"(spare {plugin} worker)", backend="", path="", plugin=plugin),
                   n_threads, on_exit)

    async def start(self, task_group: TaskGroup) -> None:
        """Start the process and load the model; raises ModelLoadError on failure."""
        # A spec msgpack can't carry fails here, before any process starts.
        protocol.encode(protocol.Load(spec=self.spec, n_threads=self.n_threads))
        await self.spawn(task_group)
        await self.load(self.spec)

    async def spawn(self, task_group: TaskGroup) -> None:
        """Start the process; it imports its plugin and waits for a model."""
        # One thread budget for every threading library the backend may use.
        worker_env = {name: str(self.n_threads) for name in (
            "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")}
        worker_env["PYTHONUNBUFFERED"] = "1"
        # The worker logs what the server would show of it, and no more.
        worker_env["LLAMA_API_WORKER_LOG_LEVEL"] = logging.getLevelName(
            self.log.getEffectiveLevel())
        # Scanned once per server (in a thread: it reads every distribution's metadata).
        entry_point = await anyio.to_thread.run_sync(entry_point_value, self.spec.plugin)
        self._process = await self.open_process(
            [sys.executable, "-m", "llama_api.workers.child", self.spec.plugin,
             *([entry_point] if entry_point else [])], worker_env)
        self.pid = self._process.pid
        self.alive = True
        task_group.start_soon(self._read_frames)
        task_group.start_soon(self._drain_stderr)
        self.log.info("started worker pid=%s threads=%s%s", self.pid, self.n_threads,
                      f" on node {self.node}" if self.node else "")

    async def load(self, spec: ModelSpec) -> None:
        """Have the spawned process load `spec`; raises ModelLoadError on failure."""
        self.spec = spec
        self.log = logging.getLogger(f"llama_api.workers.child.{spec.id}")
        try:
            await self._send(protocol.Load(spec=spec, n_threads=self.n_threads))
        except errors.WorkerCrashed:
            pass  # the process died before reading; _read_frames reports why
        with anyio.move_on_after(self.load_timeout or None):
            await self._loaded.wait()
        if not self._loaded.is_set():
            self._load_error = errors.ModelLoadError(self._kill_unresponsive(
                f"did not finish loading within {self.load_timeout:g} s", "--load-timeout"),
                code="worker_timeout")
            self._loaded.set()
        if self._load_error is not None:
            await self.stop()
            raise self._load_error

    async def stop(self, grace: float = 5.0) -> None:
        """Ask the worker to exit, then terminate, then kill; always reap it."""
        process = self._process
        if process is None:
            return
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                try:
                    await self._send(protocol.Shutdown())
                    await process.stdin.aclose()
                except (errors.LlamaApiError, OSError, anyio.BrokenResourceError,
                        anyio.ClosedResourceError) as exc:  # it is going anyway: terminate next
                    self.log.debug("worker pid=%s did not take the shutdown message: %s",
                                   self.pid, exc)
                for action in (None, process.terminate, process.kill):
                    if action is not None and process.returncode is None:
                        try:
                            action()
                        except ProcessLookupError:
                            pass
                    with anyio.move_on_after(grace if action is None else 2.0):
                        await process.wait()
                    if process.returncode is not None:
                        break
            await process.wait()
            await self._exited.wait()
        self.log.info("worker pid=%s exited with %s", self.pid, process.returncode)

    # -- requests --------------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        """Stream deltas; leaving early (client gone) cancels the request in the worker."""
        request_id, receive = self._open()
        finished = False
        try:
            await self._send(protocol.Generate(id=request_id, request=request))
            while (message := await self._next_frame(receive, request_id)) is not None:
                if isinstance(message, protocol.Failed):
                    finished = True
                    raise error_from(message)
                for delta in message.deltas:
                    yield delta
                if message.done:
                    finished = True
                    return
            finished = True
            raise self._crash_error()
        finally:
            self._pending.pop(request_id, None)
            if not finished and self.alive:
                with anyio.CancelScope(shield=True):
                    try:
                        await self._send(protocol.Cancel(id=request_id))
                    except errors.LlamaApiError:
                        pass

    async def embed(self, request: EmbedRequest) -> protocol.Embedded:
        return await self._ask(lambda request_id: protocol.Embed(id=request_id, request=request))

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResult:
        """The tokens the model reads for a text, or for chat messages (and tools)."""
        answer = await self._ask(lambda request_id: protocol.Tokenize(id=request_id,
                                                                      request=request))
        return answer.result

    async def detokenize(self, tokens: list[int]) -> str:
        answer = await self._ask(lambda request_id: protocol.Detokenize(id=request_id,
                                                                        tokens=tokens))
        return answer.text

    async def rerank(self, request: RerankRequest) -> RerankResult:
        answer = await self._ask(lambda request_id: protocol.Rerank(id=request_id,
                                                                    request=request))
        return answer.result

    async def _ask(self, make_message):
        """Send one request (`make_message(id)`) and return the worker's one answer."""
        request_id, receive = self._open()
        try:
            await self._send(make_message(request_id))
            message = await self._next_frame(receive, request_id)
            if message is None:
                raise self._crash_error()
            if isinstance(message, protocol.Failed):
                raise error_from(message)
            return message
        finally:
            self._pending.pop(request_id, None)

    # -- plumbing --------------------------------------------------------------------

    async def _next_frame(self, receive, request_id: int):
        """The worker's next message for a request, or None once the worker is gone. A worker
        silent on it for `request_timeout` seconds is killed (its other requests fail too)."""
        with anyio.move_on_after(self.request_timeout or None) as timer:
            try:
                return await receive.receive()
            except anyio.EndOfStream:
                return None
        assert timer.cancelled_caught
        self._kill_unresponsive(f"sent nothing for a request in {self.request_timeout:g} s",
                                "--request-timeout")
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            await self._exited.wait()  # the scheduler has let go of the model when this returns
        return None

    def _kill_unresponsive(self, what: str, flag: str) -> str:
        """Kill a worker that stopped answering; returns what its requests are told."""
        message = (f"the worker for model {self.spec.id!r} (pid {self.pid}) {what} ({flag}) "
                   "and was killed")
        self.kill(message, "worker_timeout")
        return message

    def kill(self, message: str, code: str) -> None:
        """Kill the process now; its requests fail with 503 `code` and `message`."""
        self.log.error("%s", message)
        self._killed_for = errors.WorkerCrashed(message, code=code)
        if self._process is not None and self._process.returncode is None:
            try:
                self._process.kill()
            except ProcessLookupError:
                pass

    def _open(self):
        if not self.alive:
            raise self._crash_error()
        request_id = next(self._ids)
        send, receive = anyio.create_memory_object_stream(math.inf)
        self._pending[request_id] = send
        return request_id, receive

    def _crash_error(self) -> errors.WorkerCrashed:
        if self._killed_for is not None:
            return errors.WorkerCrashed(self._killed_for.message, code=self._killed_for.code)
        return errors.WorkerCrashed(self._crash_message())

    def _crash_message(self) -> str:
        return f"the worker for model {self.spec.id!r} stopped unexpectedly ({self._exit_how()})"

    def _exit_how(self) -> str:
        """How the process ended: 'exit code N', 'signal N', or how its node was lost."""
        lost = getattr(self._process, "lost", None)  # a remote process's node went away
        if lost:
            return lost
        code = self._process.returncode if self._process else None
        return f"exit code {code}" if code is None or code >= 0 else f"signal {-code}"

    async def share_cores(self, threads: int) -> None:
        """Tell the worker how many cores it may compute on now (sent when it changes)."""
        if self.alive and threads != self.thread_budget:
            self.thread_budget = threads
            try:
                await self._send(protocol.ThreadBudget(threads=threads))
            except errors.LlamaApiError:
                pass  # it died meanwhile: the crash path reports it

    async def _send(self, message) -> None:
        try:
            frame = protocol.encode(message)
        except OverflowError as exc:  # msgpack carries 64-bit integers; JSON has no bound
            raise errors.BadRequest(f"The request holds an integer out of range ({exc}).") from None
        # No lock: the stream writes each frame whole, in one synchronous write() before it
        # waits (drain), so frames of concurrent requests can't interleave.
        try:
            await self._process.stdin.send(frame)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise self._crash_error() from exc

    async def _read_frames(self) -> None:
        frames = protocol.FrameReader()
        try:
            async for chunk in self._process.stdout:
                for body in frames.feed(chunk):
                    try:
                        message = protocol.from_worker_decoder.decode(body)
                    except msgspec.DecodeError as exc:  # e.g. a backend's float where an int goes
                        message = self._malformed(body, exc)
                    if message is not None:
                        self._dispatch(message)
            frames.end()
        except protocol.TruncatedFrame as exc:  # the worker died while writing a frame
            self.log.error("worker pid=%s: %s", self.pid, exc)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            with anyio.CancelScope(shield=True):
                await self._process.wait()
                with anyio.move_on_after(1):  # its last words, for the crash report
                    await self._stderr_done.wait()
            self._on_process_gone()

    def _malformed(self, body: bytes, exc: Exception) -> protocol.FromWorker | None:
        """A frame the protocol's types refuse: fail the request (or the load) it answers."""
        self.log.error("the worker sent a malformed frame: %s", exc)
        message = f"the backend sent a malformed answer: {exc}"
        try:
            raw = msgspec.msgpack.decode(body)
        except msgspec.DecodeError:
            raw = None
        raw = raw if isinstance(raw, dict) else {}
        if raw.get("type") == "Loaded" and not self._loaded.is_set():
            return protocol.LoadFailed(kind="BackendUnavailable", message=message)
        request_id = raw.get("id")
        if not isinstance(request_id, int) or request_id < 1:
            return None
        return protocol.Failed(id=request_id, kind="BackendUnavailable", code="backend_error",
                               message=message)

    def _dispatch(self, message: protocol.FromWorker) -> None:
        match message:
            case protocol.InfoChanged():
                self.info = message.info
            case protocol.Progress():
                self.progress = message
                fraction = "" if message.fraction is None else f" ({message.fraction:.0%})"
                self.log.info("%s%s", message.message, fraction)
            case protocol.Loaded():
                self.slots = message.slots
                self.info = message.info
                self._loaded.set()
            case protocol.LoadFailed():
                text = message.message
                if message.kind != "ModelLoadError":  # an unexpected exception in the backend
                    text = f"model {self.spec.id!r} ({self.spec.path}) failed to load: {text}"
                self._load_error = errors.ModelLoadError(text)
                self._loaded.set()
            case _:
                send = self._pending.get(message.id)
                if send is not None:
                    send.send_nowait(message)

    def _on_process_gone(self) -> None:
        was_loaded = self._loaded.is_set() and self._load_error is None
        self.alive = False
        if not self._loaded.is_set():
            self._load_error = errors.ModelLoadError(
                f"the worker for model {self.spec.id!r} exited while loading "
                f"({self._exit_how()}); see the server log"
            )
            self._loaded.set()
        for send in self._pending.values():
            send.close()  # each waiting request sees the end and reports the crash
        self._pending.clear()
        self._exited.set()
        if was_loaded:
            self.on_exit(self)

    async def _drain_stderr(self) -> None:
        """Everything the worker prints goes to the server log, line by line, at its level."""
        buffer = b""
        try:
            async for chunk in self._process.stderr:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    self._log_worker_line(line)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            self._log_worker_line(buffer)
            self._stderr_done.set()

    def _log_worker_line(self, line: bytes) -> None:
        text = line.decode(errors="replace").rstrip()
        if text.strip():
            level, text = protocol.parse_log_line(text)
            self.log.log(level, "%s", text)
            self.last_lines.append(text)
