"""The Litestar application: OpenAI routes over the scheduler."""

from __future__ import annotations

import hmac
import re
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from litestar import Controller, Litestar, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers import BaseRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.response import Stream

from llama_api import errors
from llama_api.embeddings import embeddings_response
from llama_api.generation import (chat_completion, completion, json_response,
                                  until_done_or_disconnected)
from llama_api.plugins import Plugins
from llama_api.registry import Registry
from llama_api.scheduler import Scheduler, Settings
from llama_api.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

log = logging.getLogger("llama_api.app")


@dataclass
class ServerConfig:
    models_dir: Path | None = Path("models")
    config: Path | None = None
    api_keys: list[str] = field(default_factory=list)
    scheduling: Settings = field(default_factory=Settings)


# -- errors ---------------------------------------------------------------------------

def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def api_error_handler(_: Request, exc: errors.LlamaApiError) -> Response:
    headers = {}
    if isinstance(exc, errors.Overloaded):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, errors.Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return Response(error_body(exc.message, exc.type, exc.param, exc.code),
                    status_code=exc.status, headers=headers)


def validation_error_handler(_: Request, exc: ValidationException) -> Response:
    problems = exc.extra if isinstance(exc.extra, list) else []
    first = problems[0] if problems and isinstance(problems[0], dict) else {}
    param = first.get("key") or None
    detail = first.get("message") or exc.detail
    missing = re.search(r"missing required field `([^`]+)`", detail or "")
    if missing:
        param = missing.group(1)
        message = f"`{param}` is required."
    elif param == "data":  # the body as a whole: not a JSON object
        param = None
        message = f"Invalid request body: {detail}"
    elif param:
        message = f"Invalid value for `{param}`: {detail}"
    else:
        message = f"Invalid request body: {detail}"
    return Response(error_body(message, "invalid_request_error", param, "invalid_value"),
                    status_code=400)


def undecodable_body_handler(_: Request, exc: UnicodeDecodeError) -> Response:
    # Litestar decodes the JSON body lazily and lets this through as it is.
    return Response(error_body(f"Invalid request body: not UTF-8 ({exc.reason} at byte {exc.start}).",
                               "invalid_request_error", None, "invalid_value"), status_code=400)


def http_error_handler(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 404:
        message = f"No route {request.method} {request.url.path}. See /schema for the API."
    else:
        message = exc.detail
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return Response(error_body(message, kind), status_code=exc.status_code,
                    headers=getattr(exc, "headers", None) or {})


def internal_error_handler(_: Request, exc: Exception) -> Response:
    log.exception("unexpected error", exc_info=exc)
    return Response(error_body(f"Internal error ({type(exc).__name__}); see the server log.",
                               "server_error"), status_code=500)


# -- auth -----------------------------------------------------------------------------

def api_key_guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    keys: list[bytes] = connection.app.state.api_keys
    if not keys or handler.opt.get("public"):
        return
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token_bytes = token.strip().encode()
    # Compare against every key so the time taken doesn't tell which one nearly matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token_bytes, key)
    if scheme.lower() != "bearer" or not matched:
        raise errors.Unauthorized(
            "Missing or wrong API key: send `Authorization: Bearer <key>`."
            if header else "Missing API key: send `Authorization: Bearer <key>`."
        )


# -- routes ---------------------------------------------------------------------------

class OpenAIController(Controller):
    path = "/v1"

    @get("/models", summary="List every model this server can serve")
    async def list_models(self, request: Request) -> Response:
        state = request.app.state
        loaded = state.scheduler.loaded()
        data = [model_card(spec, loaded.get(spec.id)) for spec in state.registry.models.values()]
        return json_response({"object": "list", "data": data})

    @get("/models/{model_id:path}", summary="Describe one model")
    async def get_model(self, request: Request, model_id: str) -> Response:
        state = request.app.state
        spec = state.registry.resolve(model_id.lstrip("/"))
        return json_response(model_card(spec, state.scheduler.loaded().get(spec.id)))

    @post("/completions", status_code=200, summary="Text completion (OpenAI legacy API)")
    async def completions(self, request: Request, data: CompletionRequest) -> Response | Stream:
        return await completion(request, data)

    @post("/chat/completions", status_code=200, summary="Chat completion")
    async def chat_completions(self, request: Request, data: ChatCompletionRequest) -> Response | Stream:
        return await chat_completion(request, data)

    @post("/embeddings", status_code=200, summary="Embeddings of texts or token lists")
    async def embeddings(self, request: Request, data: EmbeddingRequest) -> Response:
        body: dict = {}

        async def work() -> None:  # a client that hangs up while queued gives up its place
            body.update(await embeddings_response(request.app.state, data))

        await until_done_or_disconnected(request, work)
        return json_response(body)


def model_card(spec, entry) -> dict:
    card = {
        "id": spec.id,
        "object": "model",
        "created": 0,
        "owned_by": spec.backend,
        "loaded": entry is not None,
        "aliases": spec.aliases,
        "meta": spec.meta,
    }
    if entry is not None and entry.worker is not None:
        card["worker"] = {"pid": entry.worker.pid, "slots": entry.worker.slots,
                          "info": entry.worker.info}
    return card


@get("/health", opt={"public": True}, summary="Liveness, and which models are loaded")
async def health(request: Request) -> dict:
    state = request.app.state
    loaded = state.scheduler.loaded()
    return {"status": "ok", "loaded": sorted(loaded),
            "workers": {m: e.worker.pid for m, e in loaded.items()},
            "plugins": state.plugins.names(), "broken_plugins": state.plugins.broken}


# -- the app --------------------------------------------------------------------------

def create_app(config: ServerConfig | None = None, plugins: Plugins | None = None) -> Litestar:
    config = config or ServerConfig()
    plugins = plugins or Plugins()

    @asynccontextmanager
    async def lifespan(app: Litestar):
        started = time.perf_counter()
        app.state.plugins = plugins
        app.state.registry = Registry.build(plugins, config.models_dir, config.config)
        app.state.api_keys = [key.encode() for key in config.api_keys]
        log.info("%d model(s) available: %s", len(app.state.registry.models),
                 ", ".join(app.state.registry.models) or "none")
        async with Scheduler(config.scheduling).running() as scheduler:
            app.state.scheduler = scheduler
            log.info("ready in %.2fs", time.perf_counter() - started)
            yield

    return Litestar(
        route_handlers=[OpenAIController, health],
        lifespan=[lifespan],
        guards=[api_key_guard],
        exception_handlers={
            errors.LlamaApiError: api_error_handler,
            ValidationException: validation_error_handler,
            UnicodeDecodeError: undecodable_body_handler,
            HTTPException: http_error_handler,
            Exception: internal_error_handler,
        },
        openapi_config=OpenAPIConfig(title="llama-api", version="0.1.0", path="/schema"),
        logging_config=None,
    )
