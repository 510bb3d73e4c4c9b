"""What every route shares, in one typed place: `ServerState`.

The app's lifespan (`app.create_app`) builds it once at start; a handler receives it as
the `server` dependency by declaring a `server: Server` parameter (`PROVIDE_SERVER`), and
code Litestar calls without dependency injection (the guard) reads it with
`server_state(app)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from litestar import Litestar, Request
from litestar.di import Provide

from llama_api.api.images import ImageSettings
from llama_api.api.metrics import Metrics
from llama_api.api.responses_store import ResponsesStore
from llama_api.scheduling.events import EventBus
from llama_api.scheduling.registry import Registry
from llama_api.scheduling.scheduler import Scheduler
from llama_api.workers.plugins import Plugins

_KEY = "server"  # the one attribute of the app's Litestar state


@dataclass(frozen=True, eq=False)
class ServerState:
    """The server's parts and settings, as the lifespan made them; never rebound."""

    plugins: Plugins
    registry: Registry  # the models that can be served; rescans publish model events
    scheduler: Scheduler  # which are loaded, and who holds their slots
    events: EventBus  # loads, unloads, crashes, pins, model_added/removed
    metrics: Metrics
    responses: ResponsesStore  # the Responses API's stored responses
    api_keys: list[bytes]  # none: the API is open
    admin_keys: list[bytes]  # none: /admin is guarded like the API
    metrics_auth: Literal["admin", "api", "none"]
    models_dir: Path | None
    keepalive: float  # seconds of quiet before a stream sends an SSE comment; 0 = never
    images: ImageSettings = field(default_factory=ImageSettings)  # bounds, URL fetching

    def attach(self, app: Litestar) -> None:
        app.state[_KEY] = self


def server_state(app: Litestar) -> ServerState:
    """The app's state; the lifespan attaches it before the app serves any request."""
    return app.state[_KEY]


def _provide_server(request: Request) -> ServerState:
    return server_state(request.app)


# The app's `server` dependency (cheap and sync: no thread hop).
PROVIDE_SERVER = Provide(_provide_server, sync_to_thread=False)

# A handler's `server: Server` parameter. Litestar 2.23+ wants a dependency marked as one
# (3.0 will no longer infer it from the name); older ones, which core allows, infer it.
try:
    from litestar.di import NamedDependency
except ImportError:  # Litestar < 2.23
    Server = ServerState
else:
    Server = NamedDependency[ServerState]
