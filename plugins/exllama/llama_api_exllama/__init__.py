"""llama-api backend plugin for ExLlama.

GPTQ/EXL2 folders run on exllamav2, EXL3 and unquantized folders on exllamav3.

This entry module stays import-light (no torch, no exllama): discovery runs in the server
process. The GPU libraries are imported inside `load_model`, in the worker process.
"""

from __future__ import annotations

from pathlib import Path

from llama_api import errors
from llama_api.contract import BackendInfo, LoadedModel, hookimpl
from llama_api_exllama.discovery import EXLLAMAV2, EXLLAMAV3, NotAModel, discover, read_model_folder

__version__ = "0.1.0"
LLAMA_API_CONTRACT = "1.0"

BACKENDS = (EXLLAMAV2, EXLLAMAV3)


@hookimpl
def register_backends():
    return [
        BackendInfo(name=EXLLAMAV2, description="GPTQ and EXL2 models on NVIDIA GPUs (exllamav2)"),
        BackendInfo(
            name=EXLLAMAV3, description="EXL3 and unquantized models on NVIDIA GPUs (exllamav3)"
        ),
    ]


@hookimpl
def discover_models(models_dir):
    return discover(Path(models_dir))


def load(spec, context):
    """Load `spec` (a backend of ours): check options, then CUDA, then the library."""
    from llama_api_exllama.cuda import require_cuda
    from llama_api_exllama.generation import ExllamaModel
    from llama_api_exllama.options import parse_options
    from llama_api_exllama.prompt import PromptBuilder

    if not spec.path:
        raise errors.ModelLoadError(f"model {spec.id}: no path to a model folder")
    folder = Path(spec.path).expanduser()
    try:
        found = read_model_folder(folder)
    except NotAModel as exc:
        raise errors.ModelLoadError(f"model {spec.id}: {exc}") from exc
    # Unquantized folders load in both libraries (discovery picks exllamav3 for them).
    if found.quantization != "none" and found.backend != spec.backend:
        raise errors.ModelLoadError(
            f"model {spec.id} is {found.quantization}, which {spec.backend} does not load "
            f"(use backend {found.backend})"
        )
    opts = parse_options(spec.options, spec.backend, found.max_position_embeddings, spec.slots)
    require_cuda(spec.backend)
    prompt = PromptBuilder(folder, opts.chat_template)
    context.report(f"loading {spec.id} with {spec.backend}", 0.0)
    if spec.backend == EXLLAMAV2:
        from llama_api_exllama import exl2 as library
    else:
        from llama_api_exllama import exl3 as library
    adapter = library.load(folder, opts, context)
    info = {"quantization": found.quantization, "bits": found.bits, **adapter.info}
    model = ExllamaModel(adapter, prompt, max_seq_len=opts.max_seq_len, slots=adapter.slots,
                         backend=spec.backend, info=info)
    return LoadedModel(model=model, slots=model.slots, info=model.info)


@hookimpl
def load_model(spec, context):
    return load(spec, context)


@hookimpl
def unload_model(model):
    model.unload()


@hookimpl
def generate(model, request, cancelled):
    return model.generate(request, cancelled)
