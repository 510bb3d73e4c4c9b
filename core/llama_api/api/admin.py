"""Routes for operators: the admin API (models, load, unload, pin, events), /metrics, /ready.

Who may call them is the app's guard's business (`access` in each route's opt: "admin",
"metrics"); see `llama_api.api.app.api_key_guard`.
"""

from __future__ import annotations

import os
import time
from typing import Any, ClassVar, Literal

import anyio
import msgspec
from litestar import Controller, Request, Response, get, post, route
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath
from litestar.response import ServerSentEvent, ServerSentEventMessage

from llama_api import errors
from llama_api.api import openapi
from llama_api.api.http import GET_OR_HEAD, json_response
from llama_api.api.metrics import CONTENT_TYPE
from llama_api.api.state import Server
from llama_api.contract.records import ModelSpec
from llama_api.scheduling import memory, replicas
from llama_api.scheduling.entries import Entry
from llama_api.scheduling.scheduler import Scheduler


class LoadOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pin: bool = False


class UnloadOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    force: bool = False  # unload even with requests running or queued (they fail)


def wall_time(monotonic: float) -> float:
    return time.time() - (time.monotonic() - monotonic)


def model_status(spec: ModelSpec, scheduler: Scheduler) -> dict[str, Any]:
    """One model as an operator sees it; fields that don't apply to its state are null."""
    state = scheduler.state_of(spec.id)
    # The entry the state describes: while a model unloads, a new load of it may already be
    # in `entries`, with another process and no slots yet.
    entry: Entry | None = (scheduler.unloading if state == "unloading"
                           else scheduler.entries).get(spec.id)
    process = entry.handle if entry is not None else None
    worker = process if entry is not None and entry.loaded else None
    status: dict[str, Any] = {
        "id": spec.id,
        "backend": spec.backend,
        "state": state,
        "pinned": spec.id in scheduler.pinned,
        "error": scheduler.failures.get(spec.id) if state == "failed" else None,
        "progress": None,
        # Where its worker runs: "local", or a Ray node (`name/id6`) with --ray.
        "node": (entry.node.label or "local") if entry is not None else None,
        "pid": process.pid if process is not None else None,  # on that node
        # Measured here; a remote worker's memory is not (its node counts its estimate).
        "rss_bytes": memory.rss(process.pid) if process and process.pid and process.local else None,
        "gpu_memory_bytes": None,  # not measured yet
        "slots": None,
        "slots_in_use": None,
        "queued": None,
        "last_used": wall_time(entry.last_used) if entry is not None else None,
        "load_seconds": entry.load_seconds if entry is not None else None,
    }
    progress = getattr(process, "progress", None)  # the worker's last Progress frame
    if state == "loading" and progress is not None:
        status["progress"] = {"message": progress.message, "fraction": progress.fraction}
    if worker is not None:
        status.update(slots=worker.slots, slots_in_use=entry.in_use, queued=entry.queued)
    if spec.replicas > 1:  # each replica's worker, the model's own first
        status["replicas"] = [replica_status(replica.id, scheduler)
                              for replica in replicas.replica_specs(spec)]
    return status


def replica_status(replica_id: str, scheduler: Scheduler) -> dict[str, Any]:
    entry = scheduler.entries.get(replica_id)
    return {"id": replica_id, "state": scheduler.state_of(replica_id),
            "node": (entry.node.label or "local") if entry is not None else None,
            "pid": entry.handle.pid if entry is not None and entry.handle else None,
            "slots_in_use": entry.in_use if entry is not None else None}


def decode_options(body: bytes, type_):
    """An action's optional JSON body; an empty body means the defaults."""
    if not body.strip():
        return type_()
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        raise errors.BadRequest(f"Invalid request body: {exc}.", code="invalid_value") from None
    except msgspec.DecodeError as exc:
        raise errors.BadRequest(f"Invalid request body: not JSON ({exc}).",
                                code="invalid_value") from None


# Every admin route may refuse a caller (401, 403 with an API key where an admin key is set).
ADMIN = (401, 403)


class Readiness(msgspec.Struct):
    status: Literal["ready", "not ready"]
    problems: list[str]


class AdminController(Controller):
    path = "/admin"
    opt: ClassVar[dict[str, Any]] = {"access": "admin"}

    @get("/models", responses=openapi.errors(*ADMIN),
         summary="Every model, with its state, worker, memory and queue")
    async def list_models(self, server: Server) -> Response:
        scheduler = server.scheduler
        models = await server.registry.current()
        return json_response({"models": [model_status(spec, scheduler) for spec in models.values()],
                              "queued": scheduler.queued()})

    @get("/models/{model_id:path}", responses=openapi.errors(*ADMIN, 400, 404),
         summary="One model, as in /admin/models")
    async def get_model(self, server: Server, model_id: FromPath[str]) -> Response:
        spec = await server.registry.find(model_id.lstrip("/"))
        return json_response(model_status(spec, server.scheduler))

    @post("/models/{target:path}", status_code=200,
          responses=openapi.errors(*ADMIN, *openapi.READS_BODY, *openapi.RUNS_MODEL),
          summary="POST /admin/models/ID/load ({\"pin\": true} pins it too), .../unload "
                  "(409 while it serves, unless {\"force\": true}), .../pin, .../unpin")
    async def act(self, request: Request, server: Server,
                  target: FromPath[str]) -> Response:
        # One route for the four actions: a model id may hold slashes, and a `path`
        # parameter can only come last in a Litestar route.
        model_id, _, action = target.strip("/").rpartition("/")
        if action not in ("load", "unload", "pin", "unpin") or not model_id:
            raise errors.HTTPRefusal(
                f"No route POST {request.url.path}: the actions are "
                "/admin/models/ID/load, /unload, /pin and /unpin.", status=404)
        spec = await server.registry.find(model_id)
        scheduler = server.scheduler
        body = await request.body()
        if action == "load":
            await scheduler.load(spec, pin=decode_options(body, LoadOptions).pin)
        elif action == "unload":
            await scheduler.unload(spec.id, force=decode_options(body, UnloadOptions).force)
        elif action == "pin":
            scheduler.pin(spec.id)
        else:
            scheduler.unpin(spec.id)
        return json_response(model_status(spec, scheduler))

    @post("/rescan", status_code=200, responses=openapi.errors(*ADMIN),
          summary="Look for new or removed models in the models folder now")
    async def rescan(self, server: Server) -> Response:
        registry = server.registry  # it publishes model_added and model_removed
        added, removed = await anyio.to_thread.run_sync(registry.rescan)
        return json_response({"added": added, "removed": removed, "models": sorted(registry.known)})

    @get("/requests", responses=openapi.errors(*ADMIN),
         summary="The last API requests answered, newest first (no prompt, answer or header)")
    async def recent_requests(self, server: Server) -> Response:
        return json_response({"requests": server.metrics.recent.newest_first()})

    @get("/events", responses=openapi.errors(*ADMIN), media_type=openapi.EVENT_STREAM,
         summary="Server-sent events: loads, unloads, evictions, crashes, pins")
    async def events(self, server: Server) -> ServerSentEvent:
        bus = server.events
        keepalive = server.keepalive  # --keepalive, as every stream; 0 = never

        async def stream():
            async with bus.subscribe() as subscription:
                # Subscribed: whatever happens from now on reaches this client.
                yield ServerSentEventMessage(comment="connected", data=None)
                while True:
                    with anyio.move_on_after(keepalive or None) as waited:
                        event = await subscription.next()
                    if waited.cancelled_caught:
                        yield ServerSentEventMessage(comment="keep-alive", data=None)
                        continue
                    yield ServerSentEventMessage(event=event.kind,
                                                 data=msgspec.json.encode(event.as_dict()).decode())

        return ServerSentEvent(stream(), headers={"Cache-Control": "no-cache",
                                                  "X-Accel-Buffering": "no"})


@get("/metrics", opt={"access": "metrics"}, summary="Prometheus metrics (text format)",
     media_type=CONTENT_TYPE, responses=openapi.errors(*ADMIN))
async def metrics(server: Server) -> Response:
    return Response(server.metrics.exposition(), media_type=CONTENT_TYPE)


def readiness_problems(plugins, models_dir) -> list[str]:
    problems = [f"plugin {name} failed to load: {error}" for name, error in plugins.broken.items()]
    if not plugins.names():
        problems.append("no backend plugin is installed")
    if models_dir is not None:
        if not os.path.isdir(models_dir):
            problems.append(f"the models folder {models_dir} is missing")
        elif not os.access(models_dir, os.R_OK | os.X_OK):
            problems.append(f"the models folder {models_dir} is not readable")
    return problems


@route("/ready", http_method=GET_OR_HEAD, opt={"public": True},
       summary="Readiness: plugins loaded, models folder readable",
       responses={503: ResponseSpec(Readiness, description="Not ready: `problems` says why",
                                    generate_examples=False)})
async def ready(server: Server) -> Response[Readiness]:
    problems = readiness_problems(server.plugins, server.models_dir)
    body = Readiness(status="not ready" if problems else "ready", problems=problems)
    return Response(msgspec.json.encode(body), media_type="application/json",
                    status_code=503 if problems else 200)


OPERATOR_ROUTES = [AdminController, metrics, ready]
