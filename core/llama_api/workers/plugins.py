"""Finding and loading backend plugins through the `llama_api` entry point group, and
refusing those that would break the contract (`llama_api.contract.hookspecs`)."""

from __future__ import annotations

import functools
import importlib
import inspect
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
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the server
                self._refuse(ep.name, f"{type(exc).__name__}: {exc}")
                continue
            self._register(ep.name, module)
        self.pm.check_pending()

    def _load_value(self, name: str, value: str) -> None:
        """Import "module:attr" (or "module") and register it as plugin `name`."""
        try:
            module_name, _, attr = value.partition(":")
            plugin = importlib.import_module(module_name.strip())
            for part in filter(None, attr.strip().split(".")):
                plugin = getattr(plugin, part)
        except Exception as exc:  # noqa: BLE001 - reported as the scan's failures are
            self._refuse(name, f"{type(exc).__name__}: {exc}")
        else:
            self._register(name, plugin)
        self.pm.check_pending()

    def _refuse(self, name: str, reason: str) -> None:
        log.warning("plugin %s is not used: %s", name, reason)
        self.broken[name] = reason

    def _register(self, name: str, plugin) -> None:
        """Register `plugin` unless it breaks the contract: another major version, or a
        hook parameter with a default (which pluggy before 1.7 would never pass)."""
        reason = contract_mismatch(plugin)
        if reason is None:
            try:
                self.pm.register(plugin, name=name)
            except Exception as exc:  # noqa: BLE001 - pluggy's own validation of the hooks
                reason = f"{type(exc).__name__}: {exc}"
        if reason is None:
            reason = self._defaulted_parameters(plugin)
            if reason is not None:
                self.pm.unregister(plugin)
        if reason is not None:
            self._refuse(name, reason)

    def _defaulted_parameters(self, plugin) -> str | None:
        for caller in self.pm.get_hookcallers(plugin) or []:
            names = set(caller.spec.argnames) if caller.spec is not None else set()
            for impl in caller.get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                defaulted = [parameter.name for parameter in
                             inspect.signature(impl.function).parameters.values()
                             if parameter.name in names
                             and parameter.default is not inspect.Parameter.empty]
                if defaulted:
                    return (f"hook {caller.name} gives parameter {defaulted[0]!r} a default "
                            "value, which pluggy before 1.7 never replaces with the core's "
                            "argument: remove the default")
        return None

    @property
    def hook(self):
        return self.pm.hook

    def names(self) -> list[str]:
        return sorted(name for name, _ in self.pm.list_name_plugin())

    def estimate_memory(self, spec, gpu: bool):
        """The `estimate_memory` hook of the plugin serving `spec` alone (None: no plugin,
        or no estimate)."""
        name = spec.plugin or self.backends().get(spec.backend)
        if name is None or self.pm.get_plugin(name) is None:
            return None
        others = [plugin for other, plugin in self.pm.list_name_plugin() if other != name]
        return self.pm.subset_hook_caller("estimate_memory", others)(spec=spec, gpu=gpu)

    def backends(self) -> dict[str, str]:
        """backend name -> plugin name."""
        found: dict[str, str] = {}
        for impl in self.pm.hook.register_backends.get_hookimpls():
            for info in impl.function() or []:
                found[info.name] = impl.plugin_name
        return found


def contract_mismatch(plugin) -> str | None:
    """Why a plugin's declared contract version rules it out; None when it fits."""
    declared = getattr(plugin, "LLAMA_API_CONTRACT", None)
    speaks = hookspecs.CONTRACT_VERSION
    if not isinstance(declared, str) or not declared.split(".")[0].isdigit():
        return (f"it declares no LLAMA_API_CONTRACT = \"major.minor\" (the contract version "
                f"it was written for; this llama-api speaks {speaks})")
    if declared.split(".")[0] != speaks.split(".")[0]:
        return (f"it was written for contract {declared}; this llama-api speaks {speaks} "
                "(install a version of the plugin made for it)")
    return None
