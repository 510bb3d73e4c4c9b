"""The scheduler's settings, and what it keeps for each model it has loaded or is loading.

`Settings` are read at start; an `Entry` lives in `Scheduler.entries` from a model's load to
its unload.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import anyio

from llama_api import errors
from llama_api.contract.records import ModelSpec
from llama_api.scheduling.memory import Footprint
from llama_api.scheduling.placement import LOCAL, Node
from llama_api.workers.handle import WorkerHandle


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class Settings:
    max_workers: int = 1
    max_queue: int = 64
    idle_timeout: float = 0.0  # seconds; 0 = never
    # Threads per worker; None = the machine's cores shared among max_workers.
    threads_per_worker: int | None = None
    # Bytes all workers together may hold, in host RAM and in VRAM (all GPUs summed);
    # None = 90% of what is detected, unlimited where nothing is.
    max_memory: int | None = None
    max_gpu_memory: int | None = None
    # A worker is killed as unresponsive when a running request gets no frame from it for
    # request_timeout seconds, or a load takes longer than load_timeout; 0 = no limit.
    request_timeout: float = 300.0
    load_timeout: float = 600.0
    spare_workers: bool = False  # keep a started worker per plugin in use (scheduler)


@dataclass(eq=False)
class Entry:
    """A model that is loading or loaded (or, in `Scheduler.unloading`, being unloaded)."""

    spec: ModelSpec
    ready: anyio.Event = field(default_factory=anyio.Event)
    error: errors.LlamaApiError | None = None
    slots: anyio.Semaphore | None = None
    users: int = 0  # requests that hold or wait for this model's slots
    last_used: float = field(default_factory=time.monotonic)
    handle: WorkerHandle | None = None  # the worker, from its start (see `loaded`)
    load_seconds: float | None = None
    memory: Footprint = field(default_factory=Footprint)  # estimated, then measured once loaded
    node: Node = LOCAL  # where its worker runs

    @property
    def measurable(self) -> bool:
        """Whether its memory can be read here (its worker is a local process, loaded)."""
        return self.loaded and self.handle.local

    @property
    def loaded(self) -> bool:
        """Whether `handle`'s worker has loaded the model (False while it loads, after a
        failure, and before it started)."""
        return self.handle is not None and self.ready.is_set() and self.error is None

    @property
    def state(self) -> str:
        return "loaded" if self.loaded else "loading"

    @property
    def in_use(self) -> int:
        """Slots held by requests now (0 until loaded)."""
        return self.handle.slots - self.slots.value if self.loaded else 0

    @property
    def queued(self) -> int:
        """Requests waiting for a slot (or for the load)."""
        return max(0, self.users - self.in_use)

    def idle_timeout(self, default: float) -> float:
        return default if self.spec.idle_timeout is None else self.spec.idle_timeout
