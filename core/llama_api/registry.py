"""Which models exist: discovered by plugins in the models folder, or defined in models.toml."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from llama_api import errors
from llama_api.plugins import Plugins
from llama_api.types import ModelSpec

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


def read_config(path: Path, backends: dict[str, str]) -> list[ModelSpec]:
    """Read `[models.<id>]` tables from a models.toml file."""
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
        if model.backend not in backends:
            known = ", ".join(sorted(backends)) or "none installed"
            raise ConfigError(f"{where}: field `backend`: unknown backend {model.backend!r} (known: {known})")
        if model.slots is not None and model.slots < 1:
            raise ConfigError(f"{where}: field `slots`: must be at least 1")
        if model.idle_timeout is not None and model.idle_timeout < 0:
            raise ConfigError(f"{where}: field `idle_timeout`: must be 0 (never) or more seconds")
        model_path = model.path
        if model_path and not Path(model_path).expanduser().is_absolute():
            candidate = path.parent / model_path
            model_path = str(candidate) if candidate.exists() else model_path
        specs.append(ModelSpec(
            id=model_id,
            backend=model.backend,
            path=str(Path(model_path).expanduser()) if model_path else "",
            aliases=model.aliases,
            options=model.options,
            idle_timeout=model.idle_timeout,
            slots=model.slots,
            plugin=backends[model.backend],
        ))
    return specs


class Registry:
    """Every servable model by id and alias. Configured models win over discovered ones."""

    def __init__(self, specs: list[ModelSpec]):
        self.models: dict[str, ModelSpec] = {}
        self._names: dict[str, str] = {}
        for spec in specs:
            if spec.id in self.models:
                continue
            self.models[spec.id] = spec
        # Ids first, so an alias can't hide another model's id.
        self._names = {model_id: model_id for model_id in self.models}
        for spec in self.models.values():
            for alias in spec.aliases:
                owner = self._names.setdefault(alias, spec.id)
                if owner != spec.id:
                    log.warning("alias %r of model %r is ignored: it already names model %r",
                                alias, spec.id, owner)

    @classmethod
    def build(cls, plugins: Plugins, models_dir: Path | None, config: Path | None) -> "Registry":
        backends = plugins.backends()
        specs: list[ModelSpec] = []
        if config is not None:
            specs.extend(read_config(config, backends))
        for impl in plugins.hook.discover_models.get_hookimpls():
            try:
                found = impl.function(models_dir=Path(models_dir or "models"))
            except Exception:
                log.exception("plugin %s failed to discover models", impl.plugin_name)
                continue
            for spec in found or []:
                spec.plugin = spec.plugin or backends.get(spec.backend, impl.plugin_name)
                specs.append(spec)
        return cls(specs)

    def resolve(self, name: str) -> ModelSpec:
        model_id = self._names.get(name)
        if model_id is None:
            available = ", ".join(sorted(self.models)) or "none (put a model in the models folder)"
            raise errors.ModelNotFound(
                f"The model {name!r} does not exist. Available models: {available}.",
                param="model",
            )
        return self.models[model_id]
