"""The Litestar application: the API routes over the scheduler, behind an optional API key."""

from __future__ import annotations

import hmac
import logging
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anyio
import anyio.lowlevel
from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig

from llama_api import errors
from llama_api.api.admin import OPERATOR_ROUTES
from llama_api.api.body_timeout import DEFAULT_BODY_TIMEOUT, BodyTimeoutMiddleware
from llama_api.api.error_responses import EXCEPTION_HANDLERS
from llama_api.api.images import ImageSettings
from llama_api.api.metrics import Metrics, request_middleware
from llama_api.api.responses_store import ResponsesStore, default_data_dir
from llama_api.api.routes import ROUTES
from llama_api.api.state import PROVIDE_SERVER, ServerState, server_state
from llama_api.api.web import web_routes
from llama_api.scheduling.entries import Settings
from llama_api.scheduling.events import EventBus
from llama_api.scheduling.registry import Registry
from llama_api.scheduling.scheduler import Scheduler
from llama_api.workers.plugins import Plugins

log = logging.getLogger("llama_api.api.app")


@dataclass
class ServerConfig:
    models_dir: Path | None = Path("models")
    config: Path | None = None
    api_keys: list[str] = field(default_factory=list)
    # Keys for /admin (and for /metrics by default); with none, /admin is guarded like the API.
    admin_keys: list[str] = field(default_factory=list)
    metrics_auth: Literal["admin", "api", "none"] = "admin"  # admin: the API key if no admin key
    scheduling: Settings = field(default_factory=Settings)
    # The Responses API's stored responses live in data_dir; kept responses_ttl seconds (0: ever).
    data_dir: Path = field(default_factory=default_data_dir)
    responses_ttl: float = 30 * 24 * 3600
    # A stream with nothing to send for this many seconds sends an SSE comment (0: never).
    keepalive: float = 5.0
    # Browser origins allowed to call the API (CORS), "*" for any; none: CORS stays off.
    cors_origins: list[str] = field(default_factory=list)
    # The longest wait for the next piece of a request body; then 408 (0: no bound).
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    # The web page at / (serve --no-ui: off, / answers the JSON index alone).
    ui: bool = True
    # Bounds on images in requests; `allow_urls`: fetch http(s) image URLs.
    images: ImageSettings = field(default_factory=ImageSettings)


def cors_config(origins: list[str]) -> CORSConfig | None:
    """CORS for `origins`, or None (off). Preflights may ask for any header: the OpenAI and
    Anthropic browser SDKs send Authorization or x-api-key, anthropic-version, openai-* and a
    changing set of x-stainless-* headers, and the origin, not the header, is what is checked."""
    if not origins:
        return None
    return CORSConfig(allow_origins=origins, allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                      allow_headers=["*"], expose_headers=["Retry-After"])


def offered_keys(connection: ASGIConnection) -> list[bytes]:
    """OpenAI clients send `Authorization: Bearer <key>`; Anthropic clients `x-api-key: <key>`."""
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    offered = [token.strip().encode()] if scheme.lower() == "bearer" else []
    x_api_key = connection.headers.get("x-api-key")
    if x_api_key is not None:
        offered.append(x_api_key.strip().encode())
    return offered


def matching_key(offered: list[bytes], keys: list[bytes]) -> bytes | None:
    """The configured key among `offered`, or None. Every pair is compared, so the time
    taken doesn't tell which one nearly matched."""
    found = None
    for candidate in offered:
        for key in keys:
            if hmac.compare_digest(candidate, key):
                found = key
    return found


async def api_key_guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Each route's opt says who may call it: `public`, or `access` "api" (the default),
    "admin" or "metrics" (as `metrics_auth` says). Admin routes need an admin key when one
    is set (an API key alone gets 403); with none set they are guarded like the API. An
    admin key opens the API routes too. Async, though it never waits: Litestar runs a sync
    guard in a worker thread, a thread hop on every request."""
    if handler.opt.get("public"):
        return
    server = server_state(connection.app)
    access = handler.opt.get("access", "api")
    if access == "metrics":
        access = server.metrics_auth
    if access == "none":
        return
    offered = offered_keys(connection)
    if access == "admin" and server.admin_keys:
        if matching_key(offered, server.admin_keys) is not None:
            return
        if matching_key(offered, server.api_keys) is not None:
            raise errors.Forbidden("This route needs an admin key; an API key is not enough.")
        what = "admin key"
    else:
        if not server.api_keys:
            return
        # The Responses store keeps what each key stored apart (api.http.request_key).
        connection.state.api_key = matching_key(offered, server.api_keys + server.admin_keys)
        if connection.state.api_key is not None:
            return
        what = "API key"
    how = f"send `Authorization: Bearer <key>` or `x-api-key: <key>` with an {what}"
    raise errors.Unauthorized(f"Missing or wrong {what}: {how}." if offered
                              else f"Missing {what}: {how}.")


def publish_model_changes(events: EventBus):
    """A registry's `on_change`: publish `model_added` and `model_removed` events on the event
    loop that calls this, from that loop or from any thread (a rescan runs in one)."""
    loop, loop_thread = anyio.lowlevel.current_token(), threading.get_ident()

    def on_change(added: list[str], removed: list[str]) -> None:
        def publish() -> None:
            for model_id in added:
                events.publish("model_added", model_id)
            for model_id in removed:
                events.publish("model_removed", model_id)
        if threading.get_ident() == loop_thread:
            publish()
        else:
            anyio.from_thread.run_sync(publish, token=loop)
    return on_change


def create_app(config: ServerConfig | None = None, plugins: Plugins | None = None,
               placement=None) -> Litestar:
    """The server. `placement`: where workers run (`llama_api.scheduling.placement`); this
    machine when None, a connected `llama_api.cluster.placement.RayPlacement` with --ray."""
    config = config or ServerConfig()
    plugins = plugins or Plugins()

    # Made here, not at start, as the request middleware records into it.
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: Litestar):
        started = time.perf_counter()
        events = EventBus()
        events.listen(metrics.on_event)
        registry = Registry.build(plugins, config.models_dir, config.config,
                                  remote=placement is not None)
        registry.on_change = publish_model_changes(events)
        responses = ResponsesStore(config.data_dir, config.responses_ttl)
        try:
            models = registry.known  # just scanned
            log.info("%d model(s) available: %s", len(models), ", ".join(models) or "none")
            scheduling = Scheduler(config.scheduling, events=events,
                                   on_queue_wait=metrics.on_queue_wait, plugins=plugins,
                                   placement=placement)
            async with scheduling.running() as scheduler:
                metrics.scheduler = scheduler
                ServerState(
                    plugins=plugins, registry=registry, scheduler=scheduler, events=events,
                    metrics=metrics, responses=responses,
                    api_keys=[key.encode() for key in config.api_keys],
                    admin_keys=[key.encode() for key in config.admin_keys],
                    metrics_auth=config.metrics_auth, models_dir=config.models_dir,
                    keepalive=config.keepalive, images=config.images,
                ).attach(app)
                scheduler.keep_spares(spec.plugin for spec in models.values())
                log.info("ready in %.2fs", time.perf_counter() - started)
                yield
        finally:
            responses.close()

    return Litestar(
        route_handlers=[*ROUTES, *OPERATOR_ROUTES, *web_routes(config.ui)],
        dependencies={"server": PROVIDE_SERVER},  # a handler's `server: Server` parameter
        middleware=[DefineMiddleware(request_middleware, metrics=metrics),
                    DefineMiddleware(BodyTimeoutMiddleware, seconds=config.body_timeout)],
        lifespan=[lifespan],
        guards=[api_key_guard],
        exception_handlers=EXCEPTION_HANDLERS,
        cors_config=cors_config(config.cors_origins),
        openapi_config=OpenAPIConfig(title="llama-api", version="0.1.0", path="/schema"),
        logging_config=None,
    )
