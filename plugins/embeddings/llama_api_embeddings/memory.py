"""What an embedding model will take once loaded, from its folder (server side, no torch).

- transformers: the weight files (safetensors, else PyTorch .bin), rescaled when the
  `dtype` option changes the stored precision; on the GPU when `device` is cuda (or auto
  with a GPU budget, as the core says); plus torch and transformers in the worker.
- tfhub: the SavedModel's variables, plus TensorFlow in the worker.
The activations of a batch (small for sentence encoders) are not counted.
"""

from __future__ import annotations

from pathlib import Path

from llama_api_embeddings.common import option
from llama_api_embeddings.discovery import read_json

# Measured here, beyond a bare worker: all-MiniLM-L6-v2's worker holds 446 MiB of which
# 91 MiB are weights; `import tensorflow` alone takes 590 MiB.
TORCH_RUNTIME_BYTES = 330 * 2**20
TENSORFLOW_RUNTIME_BYTES = 580 * 2**20
DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2,
               "float64": 8, "double": 8}


def weight_bytes(folder: Path) -> int:
    """Bytes of the weight files transformers would read (safetensors first)."""
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        files = [f for f in folder.glob(pattern) if f.is_file()]
        if files:
            return sum(f.stat().st_size for f in files)
    return 0


def _dtype_ratio(spec, folder: Path) -> float:
    """Loaded bytes per stored byte: 1 unless the `dtype` option converts the weights."""
    wanted = DTYPE_BYTES.get(str(option(spec, "dtype") or ""))
    config = read_json(folder / "config.json") or {}
    stored = DTYPE_BYTES.get(str(config.get("torch_dtype") or config.get("dtype") or "float32"))
    return wanted / stored if wanted and stored else 1.0


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def estimate(spec, gpu: bool = False) -> tuple[int, int] | None:
    """(host bytes, GPU bytes) for a transformers or tfhub model; None for other backends
    or a folder that isn't there. `gpu`: the server has a GPU budget (`device = "auto"`
    then loads on the GPU)."""
    folder = Path(spec.path or "").expanduser()
    if not folder.is_dir():
        return None
    if spec.backend == "tfhub":
        variables = folder / "variables"
        return folder_bytes(variables if variables.is_dir() else folder) + \
            TENSORFLOW_RUNTIME_BYTES, 0
    if spec.backend != "transformers":
        return None
    weights = int(weight_bytes(folder) * _dtype_ratio(spec, folder))
    device = str(option(spec, "device", "cpu"))
    on_gpu = gpu if device == "auto" else device.startswith("cuda")
    if on_gpu:
        return TORCH_RUNTIME_BYTES, weights
    return weights + TORCH_RUNTIME_BYTES, 0


def estimate_memory(spec, gpu: bool = False) -> tuple[int, int] | None:
    """The `estimate_memory` hook's answer; None when it isn't ours or can't be read."""
    try:
        return estimate(spec, gpu)
    except OSError:
        return None
