"""The Litestar application: the API routes over the scheduler, behind an optional API key."""

from __future__ import annotations

import hmac
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from litestar import Litestar
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.openapi import OpenAPIConfig

from llama_api import errors
from llama_api.api.error_responses import EXCEPTION_HANDLERS
from llama_api.api.routes import ROUTES
from llama_api.plugins import Plugins
from llama_api.registry import Registry
from llama_api.responses_store import ResponsesStore, default_data_dir
from llama_api.scheduler import Scheduler, Settings

log = logging.getLogger("llama_api.app")


@dataclass
class ServerConfig:
    models_dir: Path | None = Path("models")
    config: Path | None = None
    api_keys: list[str] = field(default_factory=list)
    scheduling: Settings = field(default_factory=Settings)
    # The Responses API's stored responses live in data_dir; kept responses_ttl seconds (0: ever).
    data_dir: Path = field(default_factory=default_data_dir)
    responses_ttl: float = 30 * 24 * 3600


def api_key_guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    keys: list[bytes] = connection.app.state.api_keys
    if not keys or handler.opt.get("public"):
        return
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    # OpenAI clients send `Authorization: Bearer <key>`; Anthropic clients `x-api-key: <key>`.
    x_api_key = connection.headers.get("x-api-key")
    offered = [token.strip().encode()] if scheme.lower() == "bearer" else []
    if x_api_key is not None:
        offered.append(x_api_key.strip().encode())
    # Compare against every key so the time taken doesn't tell which one nearly matched.
    matched = False
    for candidate in offered:
        for key in keys:
            matched |= hmac.compare_digest(candidate, key)
    if not matched:
        how = "send `Authorization: Bearer <key>` or `x-api-key: <key>`"
        raise errors.Unauthorized(f"Missing or wrong API key: {how}."
                                  if header or x_api_key is not None else f"Missing API key: {how}.")


def create_app(config: ServerConfig | None = None, plugins: Plugins | None = None) -> Litestar:
    config = config or ServerConfig()
    plugins = plugins or Plugins()

    @asynccontextmanager
    async def lifespan(app: Litestar):
        started = time.perf_counter()
        app.state.plugins = plugins
        app.state.registry = Registry.build(plugins, config.models_dir, config.config)
        app.state.api_keys = [key.encode() for key in config.api_keys]
        app.state.responses = ResponsesStore(config.data_dir, config.responses_ttl)
        log.info("%d model(s) available: %s", len(app.state.registry.models),
                 ", ".join(app.state.registry.models) or "none")
        async with Scheduler(config.scheduling).running() as scheduler:
            app.state.scheduler = scheduler
            log.info("ready in %.2fs", time.perf_counter() - started)
            yield
        app.state.responses.close()

    return Litestar(
        route_handlers=ROUTES,
        lifespan=[lifespan],
        guards=[api_key_guard],
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=OpenAPIConfig(title="llama-api", version="0.1.0", path="/schema"),
        logging_config=None,
    )
