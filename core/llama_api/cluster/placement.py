"""A Ray cluster as the place where model workers run: its nodes, what each can serve and
hold, and the actor a model's worker runs in.

Ray is the engine: it finds the nodes, starts the actors where they are told, carries the
bytes and reports a node's death. What the server decides itself, per node, is what it
decides for its own machine (`llama_api.scheduling.scheduler`): which node has room for a
model (its plugin installed there, its resources free, its memory estimate beside the
models that node holds), and which idle model to evict there when none has.

The server owns its actors (they are not detached): Ray ends them when the server's
process ends. A server that starts also kills actors a previous run left in its namespace.
"""

from __future__ import annotations

import logging
import socket
import threading

import anyio
import ray
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from llama_api import errors
from llama_api.cluster.node_actor import ACTOR_CONCURRENCY, WorkerActor, installed_plugins
from llama_api.cluster.remote_process import RemoteProcess
from llama_api.contract.records import ModelSpec
from llama_api.scheduling.memory import Footprint, MemoryBudget
from llama_api.scheduling.placement import Node

log = logging.getLogger(__name__)

NAMESPACE = "llama-api"
ACTOR_PREFIX = "llama-api/"
# How long Ray may take to start an actor on a node that has room (a new Python process).
ACTOR_START_TIMEOUT = 120.0
# How long the server waits for an address's first answer before it says nobody is there.
CONNECT_TIMEOUT = 5.0


class ClusterError(Exception):
    """The cluster can't be reached or used; the message says what to do."""


def check_reachable(address: str) -> None:
    """Fail fast on an address nobody answers at (Ray itself retries for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--ray {address!r}: expected HOST:PORT of the cluster's head "
                           "(ray start --head prints it), 'auto' or 'local'")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise ClusterError(f"no Ray cluster answers at {address} ({exc}); start one with "
                           "`ray start --head`, or use --ray local") from None


class RayPlacement:
    """Where workers run when the server serves with `--ray` (see the module docstring)."""

    def __init__(self, max_memory: int | None = None):
        self.max_memory = max_memory  # --max-memory: per node here
        self._plugins: dict[str, set[str]] = {}  # node id -> plugins installed there
        self._placed: dict[int, tuple[str, ModelSpec]] = {}  # actor key -> (node id, spec)
        self._keys = iter(range(1, 1 << 62))
        self._lock = threading.Lock()
        self._budgets: dict[str, MemoryBudget] = {}

    # -- the connection ------------------------------------------------------------------

    def connect(self, address: str) -> None:
        """Join the cluster at `address` ('local' starts a one-node cluster; 'auto' finds
        RAY_ADDRESS or a cluster started on this machine), then clear what a previous run
        left there. Blocking: call from a thread."""
        if address not in ("local", "auto"):
            check_reachable(address)
        try:
            ray.init(address=address, namespace=NAMESPACE,  # "local": a new cluster, always
                     include_dashboard=False, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ClusterError(f"could not join the Ray cluster at {address!r}: {exc}") from None
        for name in ray.util.list_named_actors():
            if name.startswith(ACTOR_PREFIX):
                log.info("killing actor %s, left by a previous run", name)
                ray.kill(ray.get_actor(name))
        nodes = self.nodes()
        log.info("Ray cluster: %d node(s): %s", len(nodes), ", ".join(
            f"{node.label} ({', '.join(sorted(self.plugins_on(node)))})" for node in nodes))

    def close(self) -> None:
        ray.shutdown()

    # -- the nodes -----------------------------------------------------------------------

    def nodes(self) -> list[Node]:
        """The alive nodes (asks Ray each time: nodes come and go). Blocking."""
        return [Node(id=info["NodeID"], name=info.get("NodeName") or info["NodeID"][:8],
                     resources=dict(info.get("Resources", {})))
                for info in ray.nodes() if info.get("Alive")]

    def plugins_on(self, node: Node) -> set[str]:
        """The plugins installed on `node`: asked once, by a task placed there. Blocking."""
        if node.id not in self._plugins:
            task = ray.remote(installed_plugins).options(
                num_cpus=0, max_retries=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node.id, soft=False))
            try:
                self._plugins[node.id] = set(ray.get(task.remote(), timeout=ACTOR_START_TIMEOUT))
            except (RayError, TimeoutError) as exc:
                log.warning("could not list the plugins of node %s: %s", node.label, exc)
                return set()
        return self._plugins[node.id]

    def candidates(self, spec: ModelSpec) -> list[Node]:
        """The alive nodes that could run `spec`'s worker (its plugin installed, its node,
        resources enough), least used first; a 503 naming what is missing when none can.
        Whether one has room now is `free`'s and the scheduler's to say. Blocking."""
        nodes = self.nodes()
        if spec.node:
            nodes = [node for node in nodes if node.matches(spec.node)]
            if not nodes:
                raise errors.BackendUnavailable(
                    f"model {spec.id!r} is pinned to node {spec.node!r}, which is not in the "
                    "Ray cluster now", code="no_node")
        nodes = [node for node in nodes if spec.plugin in self.plugins_on(node)]
        if not nodes:
            raise errors.BackendUnavailable(
                f"no node of the Ray cluster has the {spec.plugin!r} plugin that model "
                f"{spec.id!r} needs (pip install it on a node)", code="no_node")
        fitting = [node for node in nodes if self.has_room(node, spec, used={})]
        if not fitting:
            raise errors.BackendUnavailable(
                f"no node of the Ray cluster has the resources model {spec.id!r} asks for "
                f"({self.demands(spec)})", code="no_node")
        with self._lock:
            workers = [placed_on for placed_on, _ in self._placed.values()]
        return sorted(fitting, key=lambda node: workers.count(node.id))

    def free(self, node: Node, spec: ModelSpec) -> bool:
        """Whether `node` has the resources `spec` asks for, beside this server's workers."""
        with self._lock:
            used = self._used_on(node.id)
        return self.has_room(node, spec, used)

    def has_room(self, node: Node, spec: ModelSpec, used: dict[str, float]) -> bool:
        """Whether `node`'s resources, less `used`, hold what `spec` asks for."""
        return all(node.resources.get(name, 0) - used.get(name, 0) >= amount
                   for name, amount in self.demands(spec).items())

    def refuse_if_never_fits(self, spec: ModelSpec, need: Footprint, nodes: list[Node]) -> None:
        """503 when no candidate node's memory could hold the model even alone."""
        budgets = [self.budget(node) for node in nodes]
        if budgets and not any(budget.fits(need, []) for budget in budgets):
            max(budgets, key=lambda budget: budget.limits.host).refuse_if_never_fits(
                spec.id, need)

    @staticmethod
    def demands(spec: ModelSpec) -> dict[str, float]:
        wanted = {name: float(amount) for name, amount in spec.resources.items() if amount}
        if spec.num_gpus:
            wanted["GPU"] = float(spec.num_gpus)
        return wanted

    def _used_on(self, node_id: str) -> dict[str, float]:
        used: dict[str, float] = {}
        for placed_on, spec in self._placed.values():
            if placed_on == node_id:
                for name, amount in self.demands(spec).items():
                    used[name] = used.get(name, 0) + amount
        return used

    def budget(self, node: Node) -> MemoryBudget:
        """The node's memory limit: --max-memory (0: none), else Ray's `memory` resource of
        it (GPU memory is not known per node: not limited)."""
        if node.id not in self._budgets:
            host = (int(node.resources.get("memory", 0)) if self.max_memory is None
                    else self.max_memory)  # 0: no limit
            self._budgets[node.id] = MemoryBudget(Footprint(host, 0), gpu=False)
        return self._budgets[node.id]

    @staticmethod
    def cores(node: Node) -> int:
        return max(1, int(node.resources.get("CPU", 1)))

    # -- the workers -----------------------------------------------------------------------

    def opener(self, spec: ModelSpec, node: Node):
        """A `WorkerHandle.open_process` that starts the worker in an actor on `node`."""

        async def open_process(command: list[str], worker_env: dict[str, str]) -> RemoteProcess:
            with self._lock:
                key = next(self._keys)
                self._placed[key] = (node.id, spec)
            actor = ray.remote(WorkerActor).options(
                name=f"{ACTOR_PREFIX}{spec.id}/{key}", num_cpus=0, num_gpus=spec.num_gpus,
                resources=dict(spec.resources), max_restarts=0, max_task_retries=0,
                max_concurrency=ACTOR_CONCURRENCY,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node.id, soft=False),
            ).remote(command[1:], worker_env)  # the node's own Python runs the worker
            try:
                with anyio.fail_after(ACTOR_START_TIMEOUT):
                    pid = await actor.pid.remote()
            except (RayError, TimeoutError, OSError) as exc:
                self.release(key)
                ray.kill(actor)
                raise errors.ModelLoadError(
                    f"could not start the worker for model {spec.id!r} on node {node.label}: "
                    f"{type(exc).__name__}: {exc}") from None
            process = RemoteProcess(actor, pid, node.label)
            process.on_end = lambda: self.release(key)
            return process

        return open_process

    def release(self, key: int) -> None:
        with self._lock:
            self._placed.pop(key, None)
