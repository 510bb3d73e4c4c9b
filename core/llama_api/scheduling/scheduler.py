"""Which models are loaded, in which worker, and who may use them now.

- A request for a model that isn't loaded starts its worker; concurrent first requests
  share that one load.
- At most `max_workers` processes: at the bound the least recently used idle worker is
  unloaded; if every worker is busy the request waits, at most `max_queue` of them.
- Requests for one model take its slots in FIFO order.
- Idle workers are unloaded after their idle timeout.
- Memory (`llama_api.scheduling.memory`): a model loads only when its estimate fits beside what the
  others hold (measured once loaded); idle unpinned ones are unloaded, least recently used
  first, until it does. One larger than the limit is refused with 503.
- A pinned model is never evicted nor unloaded for idleness; when every worker holds a
  pinned model, a request for another one is refused with 409 instead of waiting forever.
- Loads, unloads, evictions and crashes are published as events (`llama_api.scheduling.events`).
- Placement (`llama_api.scheduling.placement`): a worker runs on a node, this machine by
  default or a node of a Ray cluster (`serve --ray`); max_workers, memory and eviction
  apply per node, and a request evicts only on a node that could take its model.
- With `spare_workers`, a started worker per plugin waits for a model
  (`llama_api.scheduling.spares`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from contextlib import asynccontextmanager

import anyio
from anyio.abc import TaskGroup

from llama_api import errors
from llama_api.contract.records import ModelSpec
from llama_api.scheduling import pins, replicas
from llama_api.scheduling.entries import Entry, Settings, available_cores
from llama_api.scheduling.events import EventBus
from llama_api.scheduling.memory import Footprint, MemoryBudget, describe
from llama_api.scheduling.memory_watch import watch_memory
from llama_api.scheduling.placement import LOCAL, LocalPlacement, Node
from llama_api.scheduling.spares import Spares
from llama_api.workers.handle import WorkerHandle

log = logging.getLogger(__name__)


class Scheduler:
    """Owns the worker processes: starts, leases and unloads them by the rules above, and
    shares each node's cores among its busy ones. It keeps an `Entry` per model (`entries`),
    the spares and the pins. `lease(spec)` loads a model if need be, queues for a slot and yields
    its worker; `load`, `unload`, `pin`, `unpin` serve the admin routes. All of it runs on the
    event loop (state changes between awaits, no locks); `running()` runs the background
    tasks (idle unloads, the memory watch) and unloads every worker on exit."""

    def __init__(self, settings: Settings, events: EventBus | None = None,
                 on_queue_wait: Callable[[str, float], None] | None = None,
                 plugins=None, placement=None):
        self.settings = settings
        self.memory = MemoryBudget.from_settings(settings, plugins)
        self.placement = placement or LocalPlacement(self.memory, available_cores())
        self.events = events or EventBus()
        # Told (model id, seconds) each time a lease gets its slot: how long it queued, a
        # load's time left out. Only the scheduler knows that split (the metrics' histogram).
        self.on_queue_wait = on_queue_wait
        self.entries: dict[str, Entry] = {}
        self.unloading: dict[str, Entry] = {}
        self.pinned: set[str] = set()  # model ids; a pin outlives unloads and crashes
        self.failures: dict[str, str] = {}  # model id -> why its last load failed
        self.stopping: Counter[Node] = Counter()  # being unloaded, still counted, per node
        self.claiming: Counter[str] = Counter()  # requests finding room for a model, by id
        self._waiting = 0
        self._changed = anyio.Event()
        self._task_group: TaskGroup | None = None
        # Spares run here: none with a cluster's placement.
        self.spares = Spares(settings.spare_workers and isinstance(self.placement, LocalPlacement),
                             self.threads_per_worker(LOCAL), on_exit=self._worker_exited)

    def _share_cores(self) -> None:
        """Busy workers share the machine's cores; idle ones need none. So a lone stream may
        use every core, and two busy models never oversubscribe them (backends that choose
        their threads at run time take the hint; --threads fixes the count instead)."""
        if self.settings.threads_per_worker or self._task_group is None:
            return
        busy = [e for e in self.entries.values() if e.loaded and e.in_use]
        on_node = Counter(entry.node for entry in busy)
        for entry in busy:
            share = max(1, self.placement.cores(entry.node) // on_node[entry.node])
            if entry.handle.thread_budget != share:
                self._task_group.start_soon(entry.handle.share_cores, share)

    def threads_per_worker(self, node: Node) -> int:
        if self.settings.threads_per_worker:
            return self.settings.threads_per_worker
        return max(1, self.placement.cores(node) // max(1, self.settings.max_workers))

    # -- lifecycle -------------------------------------------------------------------

    @asynccontextmanager
    async def running(self):
        """Run the scheduler's background work; unload everything on exit."""
        async with anyio.create_task_group() as task_group:
            self._task_group = task_group
            task_group.start_soon(self._unload_idle_models)
            task_group.start_soon(watch_memory, self)
            try:
                yield self
            finally:
                with anyio.CancelScope(shield=True):
                    await self.unload_all()
                task_group.cancel_scope.cancel()

    async def unload_all(self) -> None:
        async with anyio.create_task_group() as task_group:
            self.spares.stop_all(task_group)
            for entry in list(self.entries.values()):
                task_group.start_soon(self._unload, entry, "shutdown")

    # -- spare workers ---------------------------------------------------------------

    def keep_spares(self, plugins) -> None:
        """Start a spare worker for each of these plugins (with `spare_workers` on), and
        another one after each load, once no request runs."""
        self.spares.want(plugins)
        self._start_spares_when_idle()

    def _start_spares_when_idle(self) -> None:
        if (self.spares.pending and self._task_group is not None
                and not any(entry.users for entry in self.entries.values())):
            self.spares.start_wanted(self._task_group)

    # -- leasing ---------------------------------------------------------------------

    @asynccontextmanager
    async def lease(self, spec: ModelSpec):
        """Hold one slot of a loaded worker for `spec` for the duration of a request."""
        started = time.perf_counter()
        loading = 0.0  # a load isn't queueing: the wait reported leaves it out
        for attempt in range(3):
            replica = replicas.choose(spec, self.entries, self.claiming)
            self.claiming[replica.id] += 1
            try:
                entry = await self._claim(replica)
            finally:
                self.claiming[replica.id] -= 1
            try:
                if not entry.ready.is_set():
                    load_started = time.perf_counter()
                    await entry.ready.wait()
                    loading += time.perf_counter() - load_started
                if entry.error is not None:
                    raise entry.error
                if entry.slots.value == 0:
                    await self._wait(entry.slots.acquire)
                else:
                    await entry.slots.acquire()
                try:
                    if not entry.handle.alive and attempt < 2:
                        continue  # it died while we queued: this request never reached it
                    self._share_cores()
                    if self.on_queue_wait is not None:
                        self.on_queue_wait(spec.id, time.perf_counter() - started - loading)
                    yield entry.handle
                    return
                finally:
                    entry.last_used = time.monotonic()
                    entry.slots.release()
                    self._share_cores()
            finally:
                entry.users -= 1
                entry.last_used = time.monotonic()
                self._notify()
                self._start_spares_when_idle()

    async def _claim(self, spec: ModelSpec) -> Entry:
        """Find or start the entry for a model and count this request as its user."""
        need = None
        while True:
            entry = self.entries.get(spec.id)
            if entry is not None:
                entry.users += 1
                return entry
            # A plugin's estimate reads files (and may run nvidia-smi), a cluster's nodes
            # are asked for: off the event loop.
            if need is None:
                need = await anyio.to_thread.run_sync(self.memory.estimate, spec)
            nodes = await anyio.to_thread.run_sync(self.placement.candidates, spec)
            self.placement.refuse_if_never_fits(spec, need, nodes)
            if spec.id in self.entries:
                continue  # another request started this model meanwhile
            node = await self._node_with_room(spec, need,
                                              replicas.spread(spec, nodes, self.entries))
            if spec.id in self.entries:
                continue  # started by another request while we measured
            if node is not None:
                entry = Entry(spec=spec, users=1, memory=need, node=node)
                self.entries[spec.id] = entry
                self._task_group.start_soon(self._load, entry)
                return entry
            victim = self._least_recently_used_idle(nodes)
            if victim is not None:
                log.info("unloading %s (holding %s) to make room for %s", victim.spec.id,
                         describe(victim.memory), spec.id)
                await self._unload(victim, "evicted")
                continue
            pins.refuse_if_pinned_hold_the_memory(self, spec, need, nodes)
            pins.refuse_if_all_pinned(self, spec, nodes)
            await self._wait(self._changed.wait)

    async def _wait(self, wait) -> None:
        """Wait in the bounded queue; past its bound the request is refused with 429."""
        if self._waiting >= self.settings.max_queue:
            raise errors.Overloaded(
                f"The server is busy: {self._waiting} requests are already waiting. Retry shortly.",
                retry_after=1,
            )
        self._waiting += 1
        try:
            await wait()
        finally:
            self._waiting -= 1

    async def _node_with_room(self, spec: ModelSpec, need: Footprint,
                              nodes: list[Node]) -> Node | None:
        """The first of `nodes` with a worker to spare, the model's resources and memory."""
        open_nodes = [node for node in nodes if self._workers_on(node) < self.settings.max_workers
                      and self.placement.free(node, spec)]
        if not open_nodes:
            return None
        held = await self._memory_held()
        for node in open_nodes:
            if (self._workers_on(node) < self.settings.max_workers
                    and self.placement.budget(node).fits(need, held.get(node, []))):
                return node
        return None

    def _workers_on(self, node: Node) -> int:
        return sum(entry.node == node for entry in self.entries.values()) + self.stopping[node]

    def _least_recently_used_idle(self, nodes: list[Node] | None = None) -> Entry | None:
        """The idle unpinned model used least recently (on one of `nodes`): the one to evict."""
        idle = [e for e in self.entries.values()
                if e.users == 0 and e.ready.is_set() and e.spec.id not in self.pinned
                and (nodes is None or e.node in nodes)]
        return min(idle, key=lambda e: e.last_used, default=None)

    async def _memory_held(self) -> dict[Node, list[Footprint]]:
        """What the models hold on each node (those being unloaded too): measured once
        loaded here (RSS, read in a thread: it walks /proc), else estimated."""
        held = [*self.entries.values(), *self.unloading.values()]
        loaded = [(entry, entry.handle.pid) for entry in held if entry.measurable]

        def measure_all() -> list[Footprint]:
            return [self.memory.measure(pid, entry.memory) for entry, pid in loaded]

        for (entry, _), measured in zip(loaded, await anyio.to_thread.run_sync(measure_all)):
            entry.memory = measured
        by_node: dict[Node, list[Footprint]] = {}
        for entry in held:
            by_node.setdefault(entry.node, []).append(entry.memory)
        return by_node

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # -- loading and unloading -------------------------------------------------------

    async def _load(self, entry: Entry) -> None:
        started = time.perf_counter()
        log.info("loading model %s (backend %s)", entry.spec.id, entry.spec.backend)
        self.events.publish("loading", entry.spec.id, backend=entry.spec.backend)
        worker = (self.spares.take(entry.spec.plugin, self._task_group)
                  if entry.node == LOCAL else None)
        spare = worker is not None
        if worker is None:
            worker = WorkerHandle(entry.spec, self.threads_per_worker(entry.node),
                                  on_exit=self._worker_exited, node=entry.node.label,
                                  open_process=self.placement.opener(entry.spec, entry.node))
        worker.request_timeout = self.settings.request_timeout
        worker.load_timeout = self.settings.load_timeout
        entry.handle = worker
        estimate = entry.memory
        try:
            if spare:
                log.info("model %s loads in spare worker pid %s", entry.spec.id, worker.pid)
                await worker.load(entry.spec)
            else:
                await worker.start(self._task_group)
            measured = (await anyio.to_thread.run_sync(self.memory.measure, worker.pid,
                                                       estimate, True)
                        if worker.local else estimate)
        except anyio.get_cancelled_exc_class():
            await worker.stop()  # shutdown while loading: end the process, don't wait on it
            raise
        except errors.LlamaApiError as exc:
            log.error("model %s failed to load: %s", entry.spec.id, exc.message)
            entry.error = exc
        except Exception as exc:  # e.g. the interpreter could not be started
            log.exception("model %s failed to load", entry.spec.id)
            entry.error = errors.ModelLoadError(f"model {entry.spec.id!r} failed to load: {exc}")
        else:
            if not worker.alive:  # died before we got here: _worker_exited found no entry
                entry.error = errors.ModelLoadError(
                    f"the worker for model {entry.spec.id!r} exited right after loading; "
                    "see the server log")
            else:
                entry.slots = anyio.Semaphore(worker.slots)
                entry.load_seconds = time.perf_counter() - started
                entry.memory = measured
                log.info(
                    "model %s loaded in %.2fs (pid %s, %s slot(s)); memory estimated %s, "
                    "measured %s", entry.spec.id, entry.load_seconds, worker.pid, worker.slots,
                    describe(estimate), describe(entry.memory),
                )
                self.failures.pop(entry.spec.id, None)
                self.events.publish("loaded", entry.spec.id, pid=worker.pid, slots=worker.slots,
                                    seconds=round(entry.load_seconds, 3))
        if entry.error is not None:
            self.failures[entry.spec.id] = entry.error.message
            self.events.publish("load_failed", entry.spec.id, error=entry.error.message,
                                seconds=round(time.perf_counter() - started, 3))
            if self.entries.get(entry.spec.id) is entry:
                del self.entries[entry.spec.id]  # the next request tries again
        entry.ready.set()
        self._notify()
        self.keep_spares([entry.spec.plugin])

    async def _unload(self, entry: Entry, reason: str = "request") -> None:
        """End the entry's worker; `reason`: "request", "idle", "evicted" or "shutdown"."""
        if self.entries.get(entry.spec.id) is entry:
            del self.entries[entry.spec.id]
        if not entry.loaded:
            return
        self.stopping[entry.node] += 1
        self.unloading[entry.spec.id] = entry
        try:
            await entry.handle.stop()
        finally:
            self.stopping[entry.node] -= 1
            if self.unloading.get(entry.spec.id) is entry:
                del self.unloading[entry.spec.id]
            self._notify()
        log.info("unloaded model %s (%s)", entry.spec.id, reason)
        self.events.publish("unloaded", entry.spec.id, reason=reason, pid=entry.handle.pid)

    def _worker_exited(self, worker: WorkerHandle) -> None:
        entry = self.entries.get(worker.spec.id)
        if entry is not None and entry.handle is worker:
            log.error("worker for %s (pid %s) died; it will be reloaded on the next request. "
                      "Its last lines:\n%s", worker.spec.id, worker.pid,
                      "\n".join(f"  {line}" for line in worker.last_lines) or "  (none)")
            del self.entries[worker.spec.id]
            self.events.publish("crashed", worker.spec.id, pid=worker.pid)
            self._notify()

    async def _unload_idle_models(self) -> None:
        while True:
            await anyio.sleep(0.25)
            now = time.monotonic()
            for entry in list(self.entries.values()):
                timeout = entry.idle_timeout(self.settings.idle_timeout)
                if (timeout > 0 and entry.users == 0 and entry.ready.is_set()
                        and entry.spec.id not in self.pinned
                        and now - entry.last_used >= timeout):
                    log.info("model %s idle for %.0fs: unloading", entry.spec.id, timeout)
                    try:
                        await self._unload(entry, "idle")
                    except Exception:  # one failed unload must not end the scheduler (and app)
                        log.exception("unloading idle model %s failed", entry.spec.id)

    # -- what an operator asks for ----------------------------------------------------

    async def load(self, spec: ModelSpec, pin: bool = False) -> Entry:
        """Load a model (or find it loaded) without running a request; pin it if asked."""
        entry = await self._claim(spec)
        try:
            await entry.ready.wait()
            if entry.error is not None:
                raise entry.error
        finally:
            entry.users -= 1
            entry.last_used = time.monotonic()
            self._notify()
            self._start_spares_when_idle()
        if pin:
            self.pin(spec.id)
        return entry

    async def unload(self, model_id: str, force: bool = False) -> bool:
        """Unload a model now (a pin goes with it); False if it wasn't loaded. A model with
        requests running or queued is refused with 409 unless `force` (they then fail)."""
        entry = self.entries.get(model_id)
        if entry is not None and not entry.ready.is_set():
            await entry.ready.wait()  # a load in progress finishes first
            entry = self.entries.get(model_id)
        if entry is not None and entry.users and not force:
            raise errors.Conflict(f"Model {model_id!r} has {entry.users} request(s) running or queued; "
                           "retry when it is idle, or unload with {\"force\": true}.",
                           code="model_busy")
        self.unpin(model_id)
        others = [e for e in list(self.entries.values()) if e.spec.id != model_id  # replicas
                  and replicas.model_of(e.spec) == model_id and (force or not e.users)]
        for other in others:
            await self._unload(other, "request")
        if entry is None:
            return bool(others)
        await self._unload(entry, "request")
        return True

    def pin(self, model_id: str) -> None:
        if model_id not in self.pinned:
            self.pinned.add(model_id)
            self.events.publish("pinned", model_id)

    def unpin(self, model_id: str) -> None:
        if model_id in self.pinned:
            self.pinned.discard(model_id)
            self.events.publish("unpinned", model_id)
            self._notify()  # a request waiting for a worker may now evict it

    def state_of(self, model_id: str) -> str:
        if model_id in self.unloading:
            return "unloading"
        entry = self.entries.get(model_id)
        if entry is not None:
            return entry.state
        return "failed" if model_id in self.failures else "unloaded"

    def queued(self) -> int:
        """Requests waiting, for a slot or for a worker."""
        return self._waiting

    # -- status ----------------------------------------------------------------------

    def loaded(self) -> dict[str, Entry]:
        return {model_id: e for model_id, e in self.entries.items() if e.loaded}
