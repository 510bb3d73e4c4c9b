"""Spare workers (`serve --spare-worker`): one started process per plugin in use, its
libraries imported and no model loaded, so that a model's cold start costs its load alone.

A spare starts only when no request runs (its start would take cores from them), after the
server starts and after each load took one. Spares hold no model: they don't count against
`max_workers` or the memory limit. They run on this machine only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from anyio.abc import TaskGroup

from llama_api import errors
from llama_api.workers.handle import WorkerHandle

log = logging.getLogger("llama_api.scheduling.scheduler")


class Spares:
    """The spare workers of a scheduler, by plugin."""

    def __init__(self, enabled: bool, n_threads: int, on_exit: Callable[[WorkerHandle], None]):
        self.enabled = enabled
        self.n_threads = n_threads
        self.on_exit = on_exit
        self.workers: dict[str, WorkerHandle] = {}  # plugin -> a started worker, no model yet
        self._wanted: set[str] = set()  # plugins whose spare starts once all is idle

    def want(self, plugins) -> None:
        if self.enabled:
            self._wanted.update(plugin for plugin in plugins if plugin)

    def start_wanted(self, task_group: TaskGroup) -> None:
        """Start the spares wanted (call when no request runs)."""
        for plugin in sorted(self._wanted - set(self.workers)):
            spare = WorkerHandle.spare(plugin, self.n_threads, on_exit=self.on_exit)
            self.workers[plugin] = spare
            task_group.start_soon(self._spawn, spare, task_group)
        self._wanted.clear()

    @property
    def pending(self) -> bool:
        return bool(self._wanted)

    async def _spawn(self, spare: WorkerHandle, task_group: TaskGroup) -> None:
        try:
            await spare.spawn(task_group)
        except (OSError, errors.LlamaApiError) as exc:  # loads then start their own workers
            log.warning("could not start a spare %s worker: %s", spare.spec.plugin, exc)
            if self.workers.get(spare.spec.plugin) is spare:
                del self.workers[spare.spec.plugin]
            return
        if self.workers.get(spare.spec.plugin) is not spare:  # shut down while it started
            await spare.stop()

    def take(self, plugin: str, task_group: TaskGroup) -> WorkerHandle | None:
        """The plugin's spare once its process is up; None if there is none, or it is still
        starting (a new worker is then as quick), or it died (it is reaped)."""
        spare = self.workers.get(plugin)
        if spare is None or spare.pid is None:
            return None
        del self.workers[plugin]
        if not spare.alive:
            task_group.start_soon(spare.stop)
            return None
        return spare

    def stop_all(self, task_group: TaskGroup) -> None:
        """Stop every spare, and start none from here on (the server is shutting down)."""
        workers, self.workers = list(self.workers.values()), {}
        self.enabled = False
        self._wanted.clear()
        for spare in workers:
            task_group.start_soon(spare.stop)
