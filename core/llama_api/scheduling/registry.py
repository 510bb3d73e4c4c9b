"""Which models exist: discovered by plugins in the models folder, or defined in models.toml."""

from __future__ import annotations

import logging
import os
import threading
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import msgspec

from llama_api import errors
from llama_api.contract.records import ModelSpec
from llama_api.workers.plugins import Plugins

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """models.toml is invalid; the message names the file, the model and the field."""


class ConfiguredModel(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    backend: str
    path: str = ""
    aliases: list[str] = []
    options: dict[str, Any] = {}
    idle_timeout: float | None = None
    slots: int | None = None
    max_tokens: int | None = None
    # A vision model's projector GGUF (llama.cpp's mmproj): passed as the `mmproj` option.
    mmproj: str = ""
    # Placement on a Ray cluster (serve --ray).
    num_gpus: float = 0
    resources: dict[str, float] = {}
    node: str = ""
    replicas: int = 1


def read_config(path: Path, backends: dict[str, str], remote: bool = False) -> list[ModelSpec]:
    """Read `[models.<id>]` tables from a models.toml file. With `remote` (a Ray cluster's
    nodes run the workers), a backend this machine lacks is taken as the plugin of that
    name: the cluster's nodes say whether one of them has it."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown = set(data) - {"models"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}; expected [models.<id>]")
    specs = []
    for model_id, table in data.get("models", {}).items():
        where = f"{path}: model {model_id!r}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table")
        try:
            model = msgspec.convert(table, ConfiguredModel)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if model.backend not in backends and remote:
            backends = {**backends, model.backend: model.backend}
        if model.backend not in backends:
            known = ", ".join(sorted(backends)) or "none installed"
            raise ConfigError(f"{where}: field `backend`: unknown backend {model.backend!r} (known: {known})")
        if model.slots is not None and model.slots < 1:
            raise ConfigError(f"{where}: field `slots`: must be at least 1")
        if model.idle_timeout is not None and model.idle_timeout < 0:
            raise ConfigError(f"{where}: field `idle_timeout`: must be 0 (never) or more seconds")
        if model.max_tokens is not None and model.max_tokens < 1:
            raise ConfigError(f"{where}: field `max_tokens`: must be at least 1")
        if model.replicas < 1:
            raise ConfigError(f"{where}: field `replicas`: must be at least 1")
        if model.num_gpus < 0 or any(amount < 0 for amount in model.resources.values()):
            raise ConfigError(f"{where}: fields `num_gpus` and `resources`: must not be negative")
        model_path = model.path
        if model_path and not Path(model_path).expanduser().is_absolute():
            candidate = path.parent / model_path
            model_path = str(candidate) if candidate.exists() else model_path
        options, meta = dict(model.options), {}
        if model.mmproj:
            options["mmproj"] = str(beside_config(path, model.mmproj))
            meta = {"capabilities": ["vision"], "mmproj": options["mmproj"]}
        specs.append(ModelSpec(
            id=model_id,
            backend=model.backend,
            path=str(Path(model_path).expanduser()) if model_path else "",
            aliases=model.aliases,
            options=options,
            meta=meta,
            idle_timeout=model.idle_timeout,
            slots=model.slots,
            max_tokens=model.max_tokens,
            num_gpus=model.num_gpus,
            resources=model.resources,
            node=model.node,
            replicas=model.replicas,
            plugin=backends[model.backend],
        ))
    return specs


def beside_config(config: Path, name: str) -> Path:
    """A relative path in models.toml is read from the file's folder when it is there."""
    path = Path(name).expanduser()
    if not path.is_absolute() and (config.parent / path).exists():
        return config.parent / path
    return path


class Catalog(NamedTuple):
    """The models by id, and every id and alias to its model's id: replaced as one value."""

    models: dict[str, ModelSpec]
    names: dict[str, str]


def catalog_of(specs: list[ModelSpec]) -> Catalog:
    models: dict[str, ModelSpec] = {}
    for spec in specs:
        models.setdefault(spec.id, spec)
    # Ids first, so an alias can't hide another model's id.
    names = {model_id: model_id for model_id in models}
    for spec in models.values():
        for alias in spec.aliases:
            owner = names.setdefault(alias, spec.id)
            if owner != spec.id:
                log.warning("alias %r of model %r is ignored: it already names model %r",
                            alias, spec.id, owner)
    return Catalog(models, names)


class Registry:
    """Every servable model by id and alias. Configured models win over discovered ones.

    A registry built from a models folder rescans it when the folder changes (a model
    pulled or copied in while the server runs): on each listing and on a name it does not
    know. The check is a walk of the folder's directories, no file is read; the async
    methods (`current`, `find`) do it in a thread, off the event loop. A rescan may run in
    a thread while the event loop reads: it builds a new catalog and swaps it in with one
    assignment, and rescans take turns. `on_change(added, removed)` is told of every
    rescan that changed something, in the thread that ran it.
    """

    def __init__(self, specs: list[ModelSpec], source: Source | None = None,
                 on_change: Callable[[list[str], list[str]], None] | None = None):
        self._source = source
        self._signature = folder_signature(source.models_dir) if source else None
        self._catalog = catalog_of(specs)
        self._rescanning = threading.Lock()
        self.on_change = on_change

    @classmethod
    def build(cls, plugins: Plugins, models_dir: Path | None, config: Path | None,
              remote: bool = False) -> Registry:
        configured = (read_config(config, plugins.backends(), remote) if config is not None
                      else [])
        source = Source(plugins, Path(models_dir or "models"), configured)
        return cls(source.specs(), source)

    @property
    def models(self) -> dict[str, ModelSpec]:
        """The models, after a rescan if the folder changed (blocking: see `current`)."""
        self.rescan_if_changed()
        return self._catalog.models

    @property
    def known(self) -> dict[str, ModelSpec]:
        """The models as of the last scan, without looking at the folder."""
        return self._catalog.models

    async def current(self) -> dict[str, ModelSpec]:
        """`models`, with the folder checked in a thread."""
        await anyio.to_thread.run_sync(self.rescan_if_changed)
        return self._catalog.models

    def rescan_if_changed(self) -> bool:
        """Rediscover the models folder if it changed since the last scan; True if it did.

        The check takes the rescan lock: a caller that comes while another thread rescans
        waits for the new catalog rather than reading the old one (the folder's signature
        already says "scanned")."""
        if self._source is None:
            return False
        with self._rescanning:
            if folder_signature(self._source.models_dir) == self._signature:
                return False
            added, removed = self._scan()
        self._announce(added, removed)
        return True

    def rescan(self) -> tuple[list[str], list[str]]:
        """Rediscover the models folder now; the model ids (added, removed)."""
        if self._source is None:
            return [], []
        with self._rescanning:
            added, removed = self._scan()
        self._announce(added, removed)
        return added, removed

    def _scan(self) -> tuple[list[str], list[str]]:
        # Called with the rescan lock held. The signature is taken before the scan: a change
        # during the scan shows next time.
        self._signature = folder_signature(self._source.models_dir)
        before = self._catalog.models
        self._catalog = catalog = catalog_of(self._source.specs())
        return sorted(set(catalog.models) - set(before)), sorted(set(before) - set(catalog.models))

    def _announce(self, added: list[str], removed: list[str]) -> None:
        if added or removed:
            log.info("models folder changed: added %s, removed %s",
                     added or "none", removed or "none")
            if self.on_change is not None:
                self.on_change(added, removed)

    def resolve(self, name: str) -> ModelSpec:
        """The model `name` (an id or an alias) names; 404 listing the models if none."""
        if name not in self._catalog.names:
            self.rescan_if_changed()
        return self._spec_named(name)

    async def find(self, name: str) -> ModelSpec:
        """`resolve`, with the folder checked in a thread when the name is unknown."""
        if name not in self._catalog.names:
            await anyio.to_thread.run_sync(self.rescan_if_changed)
        return self._spec_named(name)

    def _spec_named(self, name: str) -> ModelSpec:
        catalog = self._catalog  # one catalog throughout, whatever a rescan swaps in
        model_id = catalog.names.get(name)
        if model_id is None:
            available = ", ".join(sorted(catalog.models)) or "none (put a model in the models folder)"
            raise errors.ModelNotFound(
                f"The model {name!r} does not exist. Available models: {available}.",
                param="model",
            )
        return catalog.models[model_id]


class Source:
    """Where a registry's models come from: models.toml entries (read once, authoritative)
    and what the plugins discover in the models folder."""

    def __init__(self, plugins: Plugins, models_dir: Path, configured: list[ModelSpec]):
        self.plugins = plugins
        self.models_dir = models_dir
        self.configured = configured

    def specs(self) -> list[ModelSpec]:
        backends = self.plugins.backends()
        specs = list(self.configured)
        for impl in self.plugins.hook.discover_models.get_hookimpls():
            try:
                found = impl.function(models_dir=self.models_dir)
            except Exception:
                log.exception("plugin %s failed to discover models", impl.plugin_name)
                continue
            for spec in found or []:
                if in_hidden_folder(spec.path, self.models_dir):
                    continue  # e.g. a pull in progress (.pull/), or a tool's cache (.cache/)
                spec.plugin = spec.plugin or backends.get(spec.backend, impl.plugin_name)
                specs.append(spec)
        return specs


def in_hidden_folder(path: str, models_dir: Path) -> bool:
    try:
        relative = Path(os.path.abspath(path)).relative_to(os.path.abspath(models_dir))
    except ValueError:
        return False  # outside the folder (a packaged model): not ours to hide
    return any(part.startswith(".") for part in relative.parts[:-1])


def folder_signature(models_dir: Path) -> tuple:
    """What is in `models_dir` (hidden folders left out): each directory's entries and
    modification time. The names catch changes that fall within one tick of the clock that
    stamps modification times (a few milliseconds on Linux)."""
    signature = []
    for folder, subfolders, files in os.walk(models_dir):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        try:
            mtime = os.stat(folder).st_mtime_ns
        except OSError:
            continue
        signature.append((folder, mtime, tuple(subfolders), tuple(sorted(files))))
    return tuple(signature)
