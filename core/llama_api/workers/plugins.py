"""Finding and loading backend plugins through the `llama_api` entry point group."""

from __future__ import annotations

import functools
import importlib
import logging
import os

import pluggy

from llama_api.contract import hookspecs

log = logging.getLogger(__name__)

GROUP = "llama_api"


def allowed_plugins() -> set[str] | None:
    """`LLAMA_API_PLUGINS=a,b` limits which plugins load; unset means all."""
    value = os.environ.get("LLAMA_API_PLUGINS")
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def entry_points(group: str):
    # importlib.metadata costs a worker ~20 ms to import: only where it is scanned.
    from importlib.metadata import entry_points as installed

    return installed(group=group)


@functools.cache
def _entry_point_values() -> dict[str, str]:
    found: dict[str, str] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep.value)  # the first on sys.path, as Plugins loads it
    return found


def entry_point_value(name: str) -> str | None:
    """The plugin's "module:attr", from one scan of the installed distributions per process
    (a scan reads every distribution's metadata: tens of ms). The server hands it to each
    worker it starts, which then imports that one module without scanning."""
    return _entry_point_values().get(name)


class Plugins:
    """A plugin manager plus what went wrong while loading plugins.

    `only`: load that plugin alone; with `value` (its entry point's "module:attr") too,
    without reading any distribution's metadata (a worker's start)."""

    def __init__(self, only: str | None = None, value: str | None = None):
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        # name -> error message, for plugins whose entry point failed to import.
        self.broken: dict[str, str] = {}
        # name -> "distribution version", for `llama-api models`.
        self.distributions: dict[str, str] = {}
        self._load(only, value)

    def _load(self, only: str | None, value: str | None) -> None:
        if only is not None and value is not None:
            self._load_value(only, value)
            return
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

    def _load_value(self, name: str, value: str) -> None:
        """Import "module:attr" (or "module") and register it as plugin `name`."""
        try:
            module_name, _, attr = value.partition(":")
            plugin = importlib.import_module(module_name.strip())
            for part in filter(None, attr.strip().split(".")):
                plugin = getattr(plugin, part)
            self.pm.register(plugin, name=name)
        except Exception as exc:  # noqa: BLE001 - reported as the scan's failures are
            log.warning("plugin %s failed to load: %s", name, exc)
            self.broken[name] = f"{type(exc).__name__}: {exc}"
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
