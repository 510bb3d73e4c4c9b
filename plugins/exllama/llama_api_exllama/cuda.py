"""Checking for CUDA and importing the ExLlama libraries, with errors that say what to do."""

from __future__ import annotations

import importlib

from llama_api import errors

NO_GPU = "no CUDA device: exllama needs an NVIDIA GPU"
EXTRAS = {"exllamav2": "v2", "exllamav3": "v3"}


def torch_detail(torch) -> str:
    if getattr(torch.version, "cuda", None) is None:
        return f"torch {torch.__version__} is a CPU-only build"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device"


def require_cuda(library: str):
    """Import torch and `library` on a CUDA machine and return the library module.

    Raises ModelLoadError (HTTP 503) when torch is missing, no CUDA device is visible, the
    library is missing, or its import fails (it compiles its CUDA kernels on first import).
    """
    extra = EXTRAS.get(library, "v2")
    try:
        import torch
    except ImportError as exc:
        raise errors.ModelLoadError(
            f"{library} needs PyTorch with CUDA and torch does not import ({exc}): install a CUDA "
            f"build of torch, then `pip install 'llama-api-exllama[{extra}]'`"
        ) from exc
    if not torch.cuda.is_available():
        raise errors.ModelLoadError(f"{NO_GPU} ({torch_detail(torch)})")
    try:
        return importlib.import_module(library)
    except ModuleNotFoundError as exc:
        if exc.name == library:
            raise errors.ModelLoadError(
                f"{library} is not installed: `pip install 'llama-api-exllama[{extra}]'` "
                "(after a CUDA build of torch)"
            ) from exc
        raise errors.ModelLoadError(
            f"{library} is installed but a module it needs is missing ({exc.name}): "
            f"`pip install 'llama-api-exllama[{extra}]'` installs its dependencies"
        ) from exc
    except Exception as exc:  # OSError: CUDA_HOME not set, RuntimeError from nvcc/ninja, ...
        raise errors.ModelLoadError(
            f"{library} failed to build its CUDA kernels: {type(exc).__name__}: {exc}"
        ) from exc
