"""When a request for a model can't wait for room because pinned models hold it: a 409 that
says which pins to lift, rather than a wait that would never end."""

from __future__ import annotations

from llama_api import errors
from llama_api.contract.records import ModelSpec
from llama_api.scheduling.memory import Footprint, describe
from llama_api.scheduling.placement import Node


def refuse_if_all_pinned(scheduler, spec: ModelSpec, nodes: list[Node]) -> None:
    """Waiting can't help when every worker on the model's nodes holds a pinned model."""
    held = [e for e in scheduler.entries.values() if e.node in nodes]
    if any(scheduler.stopping[node] for node in nodes) or not held:
        return
    if all(e.spec.id in scheduler.pinned and e.ready.is_set() for e in held):
        names = ", ".join(sorted(e.spec.id for e in held))
        raise errors.Conflict(
            f"Cannot load model {spec.id!r}: all {len(held)} worker(s) hold pinned "
            f"models ({names}) and --max-workers is "
            f"{scheduler.settings.max_workers}. Unpin or unload one (POST /admin/models/ID/unpin).",
            code="all_models_pinned")


def refuse_if_pinned_hold_the_memory(scheduler, spec: ModelSpec, need: Footprint,
                                      nodes: list[Node]) -> None:
    """Waiting can't help when on each of the model's nodes pinned models fill memory."""
    pinned = {node: [e.memory for e in scheduler.entries.values() if e.node == node
                     and e.spec.id in scheduler.pinned and e.ready.is_set()] for node in nodes}
    if nodes and all(pinned[node] and not scheduler.placement.budget(node).fits(need, pinned[node])
                     for node in nodes):
        raise errors.Conflict(
            f"Cannot load model {spec.id!r} (estimated {describe(need)}): the pinned models "
            f"hold {describe(sum(pinned[nodes[0]], Footprint()))} of the limit "
            f"{describe(scheduler.placement.budget(nodes[0]).limits)}. Unpin or unload one "
            "(POST /admin/models/ID/unpin).", code="pinned_models_hold_memory")
