"""Replicas: `replicas = N` in models.toml serves one model from up to N workers, each loaded,
evicted, unloaded and restarted on its own, placed on different nodes where there are.

Replica k of model `m` is the model `m` (k = 1) or `m#k`, its spec otherwise the same; a
request goes to the loaded replica with the most free slots, else starts a replica not
loaded yet, else waits on the one with the fewest requests (least loaded first)."""

from __future__ import annotations

import msgspec

from llama_api.contract.records import ModelSpec

# Set on a replica's spec (meta is passed through to the worker as is): the model it serves.
REPLICA_OF = "replica_of"


def replica_specs(spec: ModelSpec) -> list[ModelSpec]:
    if spec.replicas <= 1:
        return [spec]
    return [spec, *(msgspec.structs.replace(spec, id=f"{spec.id}#{k}",
                                            meta={**spec.meta, REPLICA_OF: spec.id})
                    for k in range(2, spec.replicas + 1))]


def model_of(spec: ModelSpec) -> str:
    """The model a worker's spec serves (its own id, unless it is a replica)."""
    return spec.meta.get(REPLICA_OF, spec.id)


def choose(spec: ModelSpec, entries: dict) -> ModelSpec:
    """The replica of `spec` a new request goes to (the rules in the module docstring)."""
    replicas = replica_specs(spec)
    if len(replicas) == 1:
        return spec
    present = [(replica, entries[replica.id]) for replica in replicas if replica.id in entries]
    free = [(entry.slots.value, -index, replica) for index, (replica, entry) in enumerate(present)
            if entry.loaded and entry.slots.value > 0]
    if free:
        return max(free)[2]
    missing = [replica for replica in replicas if replica.id not in entries]
    if missing:
        return missing[0]
    return min(present, key=lambda pair: pair[1].users)[0]


def spread(spec: ModelSpec, nodes: list, entries: dict) -> list:
    """`nodes` with those that hold another replica of the same model last."""
    model = model_of(spec)
    taken = {entry.node for entry in entries.values()
             if entry.spec.id != spec.id and model_of(entry.spec) == model}
    return sorted(nodes, key=lambda node: node in taken)
