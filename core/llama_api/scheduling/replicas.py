"""Replicas: `replicas = N` in models.toml serves one model from up to N workers, each loaded,
evicted, unloaded and restarted on its own, placed on different nodes where there are.

Replica k of model `m` is the model `m` (k = 1) or `m#k`, its spec otherwise the same; a
request goes to the loaded replica with the most free slots, else starts a replica not
loaded yet, else waits on the one with the fewest requests (least loaded first)."""

from __future__ import annotations

from collections import Counter

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


def choose(spec: ModelSpec, entries: dict, claiming: Counter) -> ModelSpec:
    """The replica of `spec` a new request goes to (the rules in the module docstring).
    `claiming`: requests per model id still finding room for it (no entry yet): such a
    replica is taken, so that requests arriving together start different replicas."""
    replicas = replica_specs(spec)
    if len(replicas) == 1:
        return spec
    free = [(entries[r.id].slots.value, -index, r) for index, r in enumerate(replicas)
            if r.id in entries and entries[r.id].loaded and entries[r.id].slots.value > 0]
    if free:
        return max(free)[2]

    def users(replica: ModelSpec) -> int:
        entry = entries.get(replica.id)
        return (entry.users if entry is not None else 0) + claiming[replica.id]

    missing = [replica for replica in replicas if not users(replica)]
    return missing[0] if missing else min(replicas, key=users)


def spread(spec: ModelSpec, nodes: list, entries: dict) -> list:
    """`nodes` with those that hold another replica of the same model last."""
    model = model_of(spec)
    taken = {entry.node for entry in entries.values()
             if entry.spec.id != spec.id and model_of(entry.spec) == model}
    return sorted(nodes, key=lambda node: node in taken)
