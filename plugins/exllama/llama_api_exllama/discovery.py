"""Finding ExLlama model folders and reading what they are from their files (no torch, no GPU).

A model folder holds `config.json` (a causal LM), tokenizer files and `.safetensors` weights.
The quantization decides the library:

- GPTQ (`quantization_config.quant_method == "gptq"`, or AutoGPTQ's `quantize_config.json`,
  or `.qweight` tensors) and EXL2 (`quant_method == "exl2"` as exllamav2's converter writes it,
  a `measurement.json` beside older conversions, or `.q_weight` tensors): exllamav2.
- EXL3 (`quant_method == "exl3"` as exllamav3's converter writes it, or `.trellis` tensors)
  and unquantized folders: exllamav3.

Other quantizations (AWQ, bitsandbytes, FP8, ...) are left to other backends.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_api.contract.records import ModelSpec

log = logging.getLogger(__name__)

EXLLAMAV2 = "exllamav2"
EXLLAMAV3 = "exllamav3"

# quantization -> backend
BACKEND_FOR = {"gptq": EXLLAMAV2, "exl2": EXLLAMAV2, "exl3": EXLLAMAV3, "none": EXLLAMAV3}

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
# A safetensors header larger than this is not read (a real one is a few hundred KB).
MAX_HEADER_BYTES = 64 * 1024 * 1024


class NotAModel(Exception):
    """The folder is not an ExLlama model folder; the message says why."""


@dataclass
class ModelFolder:
    path: Path
    config: dict[str, Any]
    quantization: str  # gptq, exl2, exl3 or none
    architecture: str
    max_position_embeddings: int | None
    bits: float | None
    tokenizer_file: str
    weights: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def backend(self) -> str:
        return BACKEND_FOR[self.quantization]

    def meta(self) -> dict[str, Any]:
        meta = {
            "quantization": self.quantization,
            "architecture": self.architecture,
            "max_position_embeddings": self.max_position_embeddings,
            "bits": self.bits,
            "format": "safetensors",
        }
        meta.update(self.extra)
        return meta


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def safetensors_keys(path: Path) -> list[str]:
    """Tensor names from a .safetensors header (8-byte little-endian length, then JSON)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return []
            (size,) = struct.unpack("<Q", head)
            if size <= 0 or size > MAX_HEADER_BYTES:
                return []
            header = json.loads(f.read(size))
    except (OSError, ValueError):
        return []
    return [key for key in header if key != "__metadata__"] if isinstance(header, dict) else []


def text_config_value(config: dict[str, Any], key: str) -> Any:
    if config.get(key) is not None:
        return config[key]
    text_config = config.get("text_config")
    if isinstance(text_config, dict):
        return text_config.get(key)
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def detect_quantization(
    folder: Path, config: dict[str, Any], weights: list[str]
) -> tuple[str, float | None, dict]:
    """(quantization, bits, extra meta) for a model folder; raises NotAModel for foreign formats."""
    qcfg = config.get("quantization_config")
    qcfg = qcfg if isinstance(qcfg, dict) else {}
    method = str(qcfg.get("quant_method") or "").lower()
    extra: dict[str, Any] = {}
    if method == "gptq":
        if qcfg.get("group_size") is not None:
            extra["group_size"] = qcfg.get("group_size")
        if qcfg.get("desc_act") is not None:
            extra["desc_act"] = qcfg.get("desc_act")
        return "gptq", _number(qcfg.get("bits")), extra
    if method == "exl2":
        if _number(qcfg.get("head_bits")) is not None:
            extra["head_bits"] = qcfg["head_bits"]
        return "exl2", _number(qcfg.get("bits")), extra
    if method == "exl3":
        if _number(qcfg.get("head_bits")) is not None:
            extra["head_bits"] = qcfg["head_bits"]
        return "exl3", _number(qcfg.get("bits")), extra
    if method:
        raise NotAModel(f"quantization {method!r} is not an ExLlama format")
    # Older files without a quant_method in config.json.
    legacy_gptq = read_json(folder / "quantize_config.json")  # AutoGPTQ
    if legacy_gptq is not None and legacy_gptq.get("bits") is not None:
        if legacy_gptq.get("group_size") is not None:
            extra["group_size"] = legacy_gptq.get("group_size")
        return "gptq", _number(legacy_gptq.get("bits")), extra
    exl3_qcfg = read_json(folder / "quantization_config.json")  # written by exllamav3's converter
    if exl3_qcfg is not None and str(exl3_qcfg.get("quant_method", "")).lower() == "exl3":
        return "exl3", _number(exl3_qcfg.get("bits")), extra
    if (folder / "measurement.json").is_file():  # exllamav2's converter output
        return "exl2", None, extra
    # Last resort: the tensor names in the first weights file.
    keys = safetensors_keys(folder / weights[0]) if weights else []
    if any(k.endswith(".q_weight") for k in keys):
        return "exl2", None, extra
    if any(k.endswith(".qweight") for k in keys):
        return "gptq", None, extra
    if any(k.endswith(".trellis") for k in keys):
        return "exl3", None, extra
    dtype = str(
        text_config_value(config, "torch_dtype") or text_config_value(config, "dtype") or ""
    )
    return "none", 32.0 if dtype == "float32" else 16.0, extra


def read_model_folder(folder: Path) -> ModelFolder:
    """Describe one model folder, or raise NotAModel saying what is missing."""
    folder = Path(folder)
    config = read_json(folder / "config.json")
    if config is None:
        raise NotAModel(f"{folder}: no readable config.json")
    architectures = config.get("architectures") or []
    if isinstance(architectures, str):
        architectures = [architectures]
    causal = [a for a in architectures if isinstance(a, str) and a.endswith("ForCausalLM")]
    if not causal:
        raise NotAModel(f"{folder}: not a causal LM (architectures: {architectures})")
    tokenizer_file = next((name for name in TOKENIZER_FILES if (folder / name).is_file()), None)
    if tokenizer_file is None:
        raise NotAModel(f"{folder}: no tokenizer.json or tokenizer.model")
    weights = sorted(p.name for p in folder.glob("*.safetensors") if p.is_file())
    if not weights:
        raise NotAModel(f"{folder}: no .safetensors weights")
    quantization, bits, extra = detect_quantization(folder, config, weights)
    max_pos = _number(text_config_value(config, "max_position_embeddings"))
    return ModelFolder(
        path=folder,
        config=config,
        quantization=quantization,
        architecture=causal[0],
        max_position_embeddings=int(max_pos) if max_pos is not None else None,
        bits=bits,
        tokenizer_file=tokenizer_file,
        weights=weights,
        extra=extra,
    )


def find_model_folders(models_dir: Path) -> list[ModelFolder]:
    """Model folders under models_dir, recursively (models/gptq/<name>/ too), sorted by path."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    found: list[ModelFolder] = []
    visited: set[str] = set()
    for root, dirs, files in os.walk(models_dir, followlinks=True):
        real = os.path.realpath(root)
        if real in visited:  # a symlink loop, or the same folder linked twice
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if "config.json" not in files:
            continue
        try:
            found.append(read_model_folder(Path(root)))
        except NotAModel as exc:
            log.debug("skipping %s", exc)
            continue
        dirs[:] = []  # a model folder's subfolders are its own business
    return found


def discover(models_dir: Path) -> list[ModelSpec]:
    specs: list[ModelSpec] = []
    seen: set[str] = set()
    models_dir = Path(models_dir)
    for folder in find_model_folders(models_dir):
        model_id = folder.path.name
        if model_id in seen:  # two folders with one name: the later one gets its relative path
            model_id = folder.path.relative_to(models_dir).as_posix()
        seen.add(model_id)
        specs.append(
            ModelSpec(
                id=model_id,
                backend=folder.backend,
                path=str(folder.path),
                meta=folder.meta(),
            )
        )
    return specs
