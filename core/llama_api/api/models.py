"""GET /v1/models, /v1/models/{id} and /health: what the server can serve and has loaded."""

from __future__ import annotations

from llama_api.contract.records import ModelSpec
from llama_api.scheduling.entries import Entry
from llama_api.scheduling.scheduler import Scheduler
from llama_api.workers.plugins import Plugins


def model_card(spec: ModelSpec, entry: Entry | None) -> dict:
    card = {
        "id": spec.id,
        "object": "model",
        "created": 0,
        "owned_by": spec.backend,
        "loaded": entry is not None,
        "aliases": spec.aliases,
        # What it takes besides text: "vision" (images) for a GGUF with its projector.
        "capabilities": spec.meta.get("capabilities", []),
        "meta": spec.meta,
    }
    if entry is not None and entry.loaded:
        card["worker"] = {"pid": entry.handle.pid, "slots": entry.handle.slots,
                          "info": entry.handle.info}
    return card


def model_list(specs: dict[str, ModelSpec], scheduler: Scheduler) -> dict:
    loaded = scheduler.loaded()
    return {"object": "list",
            "data": [model_card(spec, loaded.get(spec.id)) for spec in specs.values()]}


def health(scheduler: Scheduler, plugins: Plugins) -> dict:
    loaded = scheduler.loaded()
    return {"status": "ok", "loaded": sorted(loaded),
            "workers": {m: e.handle.pid for m, e in loaded.items()},
            "plugins": plugins.names(), "broken_plugins": plugins.broken}
