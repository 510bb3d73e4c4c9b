"""The server's side of a `WorkerActor`: a worker on a Ray node, shaped like a local process.

`WorkerHandle` drives a worker through a process's surface (`stdin.send`, `stdout` and
`stderr` as async byte streams, `wait`, `terminate`, `kill`, `returncode`, `pid`). A
`RemoteProcess` gives it that surface over Ray: writes are actor calls, made one at a time
so that frames arrive in the order they were sent; the two outputs are the actor's
streaming generators. When the actor or its node dies, the outputs end and `lost` says why,
so the handle fails that worker's requests as it does a crashed local worker's.

No actor call is retried by Ray (a half-done generation must not be replayed): the actor
has `max_restarts=0` and `max_task_retries=0`.
"""

from __future__ import annotations

import logging

import anyio
import ray
from ray.exceptions import RayError

from llama_api.cluster.node_actor import SIGKILL, SIGTERM

log = logging.getLogger(__name__)


class RemoteOutput:
    """One of the worker's outputs: its chunks as they come (an async iterator of bytes)."""

    def __init__(self, process: RemoteProcess, generator):
        self._process = process
        self._generator = generator

    def __aiter__(self):
        return self._chunks()

    async def _chunks(self):
        try:
            async for ref in self._generator:
                yield await ref
        except RayError as exc:
            self._process.lost_with(exc)


class RemoteInput:
    """The worker's stdin: each `send` is one actor call, made after the previous one ended."""

    def __init__(self, process: RemoteProcess):
        self._process = process
        self._turn = anyio.Lock()  # FIFO: frames keep their order
        self._closed = False

    async def send(self, data: bytes) -> None:
        async with self._turn:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                written = await self._process.actor.write.remote(data)
            except RayError as exc:
                self._process.lost_with(exc)
                raise anyio.BrokenResourceError from exc
            if not written:
                raise anyio.BrokenResourceError

    async def aclose(self) -> None:
        async with self._turn:
            if not self._closed:
                self._closed = True
                try:
                    await self._process.actor.close_stdin.remote()
                except RayError as exc:
                    self._process.lost_with(exc)


class RemoteProcess:
    """A worker process in a `WorkerActor` on node `node` (see the module docstring)."""

    def __init__(self, actor, pid: int, node: str):
        self.actor = actor
        self.pid = pid
        self.node = node
        self.returncode: int | None = None
        self.lost: str | None = None  # how the actor or its node went away, if it did
        self.on_end = None  # called once when the worker has ended (its resources are free)
        self._killed = False
        self.stdin = RemoteInput(self)
        self.stdout = RemoteOutput(self, actor.read_stdout.options(
            num_returns="streaming").remote())
        self.stderr = RemoteOutput(self, actor.read_stderr.options(
            num_returns="streaming").remote())

    def lost_with(self, exc: BaseException) -> None:
        if self.lost is None and not self._killed:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self.lost = (f"its Ray actor on node {self.node} was lost: "
                         f"{type(exc).__name__}{': ' + first_line if first_line else ''}")
            log.warning("worker pid %s on node %s: %s", self.pid, self.node, self.lost)

    async def wait(self) -> int:
        """The worker's exit status; -9 (killed) when its actor or node went away."""
        if self.returncode is None:
            try:
                self.returncode = await self.actor.wait.remote()
            except RayError as exc:
                self.lost_with(exc)
                self.returncode = -SIGKILL
            if self.lost is None and not self._killed:
                ray.kill(self.actor)  # the worker ended: its actor goes with it
            on_end, self.on_end = self.on_end, None
            if on_end is not None:
                on_end()
        return self.returncode

    def terminate(self) -> None:
        self.actor.signal.remote(SIGTERM)

    def kill(self) -> None:
        """End the worker now: the actor is killed, and the worker with it (its keeper
        thread is gone)."""
        self._killed = True
        ray.kill(self.actor, no_restart=True)
