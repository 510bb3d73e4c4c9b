"""Where a model's worker may run: this machine, or a node of a Ray cluster.

The scheduler asks its placement which nodes could run a model (`candidates`), whether one
has its resources free now (`free`), what memory each node allows (`budget`), how many
cores it has (`cores`), and how a worker starts there (`opener`). It applies its rules
(max workers, memory, eviction) per node. `LocalPlacement`, this machine alone, is the
default; `llama_api.cluster.placement.RayPlacement` is the one for `serve --ray`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llama_api.contract.records import ModelSpec
from llama_api.scheduling.memory import Footprint, MemoryBudget


@dataclass(frozen=True)
class Node:
    """A machine workers run on: Ray's node id and name, and what it has; the local
    machine is the node with no id."""

    id: str = ""
    name: str = ""
    resources: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def label(self) -> str:
        """How people see it: `name/id6` ("" for this machine)."""
        return f"{self.name}/{self.id[:6]}" if self.id else ""

    def matches(self, wanted: str) -> bool:
        return wanted in (self.id, self.name, self.label)


LOCAL = Node()


class LocalPlacement:
    """Every worker on this machine, as a child process of the server."""

    def __init__(self, memory: MemoryBudget, cores: int):
        self.memory = memory
        self._cores = cores

    def candidates(self, spec: ModelSpec) -> list[Node]:
        return [LOCAL]

    def free(self, node: Node, spec: ModelSpec) -> bool:
        return True

    def budget(self, node: Node) -> MemoryBudget:
        return self.memory

    def refuse_if_never_fits(self, spec: ModelSpec, need: Footprint, nodes: list[Node]) -> None:
        self.memory.refuse_if_never_fits(spec.id, need)

    def cores(self, node: Node) -> int:
        return self._cores

    def opener(self, spec: ModelSpec, node: Node):
        return None  # WorkerHandle's default: a local process
