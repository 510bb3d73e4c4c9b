"""Finding and loading backend plugins through the `llama_api` entry point group."""

from __future__ import annotations

import logging
import os
from importlib.metadata import entry_points

import pluggy

from llama_api import hookspecs

log = logging.getLogger(__name__)

GROUP = "llama_api"


def allowed_plugins() -> set[str] | None:
    """`LLAMA_API_PLUGINS=a,b` limits which plugins load; unset means all."""
    value = os.environ.get("LLAMA_API_PLUGINS")
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


class Plugins:
    """A plugin manager plus what went wrong while loading plugins."""

    def __init__(self, only: str | None = None):
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        # name -> error message, for plugins whose entry point failed to import.
        self.broken: dict[str, str] = {}
        # name -> "distribution version", for `llama-api models`.
        self.distributions: dict[str, str] = {}
        self._load(only)

    def _load(self, only: str | None) -> None:
        allowed = allowed_plugins()
        for ep in entry_points(group=GROUP):
            if only is not None and ep.name != only:
                continue
            if only is None and allowed is not None and ep.name not in allowed:
                continue
            if self.pm.get_plugin(ep.name) is not None:
                continue  # the same distribution seen twice on sys.path
            if ep.dist is not None:
                self.distributions[ep.name] = f"{ep.dist.name} {ep.dist.version}"
            try:
                module = ep.load()
                self.pm.register(module, name=ep.name)
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the server
                log.warning("plugin %s failed to load: %s", ep.name, exc)
                self.broken[ep.name] = f"{type(exc).__name__}: {exc}"
        self.pm.check_pending()

    @property
    def hook(self):
        return self.pm.hook

    def names(self) -> list[str]:
        return sorted(name for name, _ in self.pm.list_name_plugin())

    def backends(self) -> dict[str, str]:
        """backend name -> plugin name."""
        found: dict[str, str] = {}
        for impl in self.pm.hook.register_backends.get_hookimpls():
            for info in impl.function() or []:
                found[info.name] = impl.plugin_name
        return found
