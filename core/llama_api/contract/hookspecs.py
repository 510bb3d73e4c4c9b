"""The hooks a backend plugin implements: contract version 1 (1.1).

A plugin is a module (or object) named by an entry point in the `llama_api` group. It
declares the contract it was written for as `LLAMA_API_CONTRACT = "1.0"` (major.minor);
one written for another major version is listed as broken, with that reason, and is never
called.

Version 1.1 added images: `GenerateRequest.images` and `TokenizeRequest.images` (decoded
RGB `ImageInput`s, each placed by an `IMAGE_MARKER` in a message's content) and the
"vision" entry of `ModelSpec.meta["capabilities"]`. The core sends images only to models
whose spec lists "vision", so a plugin written for 1.0 never receives one; the core answers
400 `NotSupported` naming the model instead.

Where hooks run:
- `register_backends`, `discover_models` and `estimate_memory` run in the server process,
  beside every other plugin's: keep the entry module import-light.
- Everything else runs in a worker process that hosts this plugin alone, for one model.
  `prepare_worker` and `load_model` may import heavy libraries. The per-model hooks
  (`generate`, `embed`, `tokenize`, `detokenize`, `rerank`, `unload_model`) receive the
  `model` of the `LoadedModel` this plugin's `load_model` returned, and no other: they
  need not check that the model is theirs.

Rules for implementations:
- Give hook parameters no default values: pluggy before 1.7 never passes an argument
  whose parameter has a default, so such a parameter would silently keep its default.
  A plugin that does so is refused when plugins load. An implementation may take fewer
  parameters than the spec (pluggy passes those it names).
- A capability a model lacks: leave the hook out, or return None (or raise
  `llama_api.errors.NotSupported`). The core answers 400 `NotSupported` naming the model.
- Bad input that depends on the model (prompt too long, a token id out of range): raise
  `llama_api.errors.BadRequest` or one of its subclasses; any other exception is a backend
  failure (503) that costs only its own request.
"""

from __future__ import annotations

import pluggy

# The contract this core speaks. A plugin declaring another major version is refused;
# a newer minor version of the same major is accepted (it may rely on hooks this core
# lacks, which pluggy then never calls).
CONTRACT_VERSION = "1.1"

hookspec = pluggy.HookspecMarker("llama_api")
hookimpl = pluggy.HookimplMarker("llama_api")


# -- in the server process ---------------------------------------------------------------


@hookspec
def register_backends():
    """Return the backends this plugin provides, as a list of `BackendInfo`.

    A model's `spec.backend` names one of them; the core sends the model to the worker of
    the plugin that registered it.
    """


@hookspec
def discover_models(models_dir):
    """Return the models this plugin can serve from a folder, as a list of `ModelSpec`.

    :param models_dir: a `pathlib.Path` (it may not exist). Packaged default models
        (weights that a Python package ships) may be returned too.
    """


@hookspec(firstresult=True)
def estimate_memory(spec, gpu):
    """Return the bytes loading `spec` will take, as `(host, gpu)`; None if unknown.

    Called only on the plugin whose backend serves `spec`, before a load, in a thread; the
    core keeps the answer until the spec or its file changes. Keep it cheap (file sizes,
    headers). Count the weights, caches and buffers, and what the backend's libraries add
    to a process; the core adds the bare worker.

    :param spec: the `ModelSpec` about to load.
    :param gpu: whether the server has a GPU budget (a GPU detected, or `--max-gpu-memory`
        given): count what goes on the GPU only then.
    """


# -- in the worker process (this plugin alone) ---------------------------------------------


@hookspec
def prepare_worker():
    """Import what `load_model` will need (heavy libraries); return nothing.

    Called once in every worker process of this plugin, before it is given a model. A spare
    worker (`serve --spare-worker`) runs it ahead of any request, so that a model not yet
    loaded then starts in its load time alone. Optional; an exception is logged, and
    `load_model` then reports what is wrong.
    """


@hookspec(firstresult=True)
def load_model(spec, context):
    """Load the model and return a `LoadedModel` (the backend's object, its slots, its info,
    and a thread-budget callback if it chooses its threads at run time).

    Raise `llama_api.errors.ModelLoadError` with a clear message (naming the file) when the
    model can't load.

    :param spec: the `ModelSpec` to load; `spec.backend` is one of this plugin's backends.
    :param context: a `LoadContext` (thread budget, progress callback).
    """


@hookspec(firstresult=True)
def unload_model(model):
    """Free the model. The worker process ends right after, so this is a courtesy for a
    clean shutdown.

    :param model: `LoadedModel.model`.
    """


@hookspec(firstresult=True)
def generate(model, request, cancelled):
    """Return an iterator of `Delta` for one completion or chat request.

    Deltas carry text as it is generated; the last one carries `finish_reason` and `usage`.
    Called from as many threads at once as the model has slots.

    :param model: `LoadedModel.model`.
    :param request: a `GenerateRequest` (one prompt, one choice), validated by the core.
    :param cancelled: a `threading.Event` set when the client went away: stop before the
        next token.
    """


@hookspec(firstresult=True)
def embed(model, request):
    """Return an `EmbedResult` (full-width vectors) for an `EmbedRequest`.

    Called from as many threads at once as the model has slots (that is how a backend
    batches across requests). The HTTP layer shortens vectors to a request's `dimensions`.

    :param model: `LoadedModel.model`.
    :param request: an `EmbedRequest`.
    """


@hookspec(firstresult=True)
def tokenize(model, request):
    """Return a `TokenizeResult` for a `TokenizeRequest` (`text`, or `messages`).

    Count tokens exactly as `generate` (or `embed`) would feed them to the model, chat
    template included.

    :param model: `LoadedModel.model`.
    :param request: a `TokenizeRequest`.
    """


@hookspec(firstresult=True)
def detokenize(model, tokens):
    """Return the text that token ids spell (special tokens as their text), a `str`.

    Raise `llama_api.errors.BadRequest` for an id outside the vocabulary.

    :param model: `LoadedModel.model`.
    :param tokens: a list of token ids (each >= 0, checked by the core).
    """


@hookspec(firstresult=True)
def rerank(model, request):
    """Return a `RerankResult`: one relevance score per document, in their order.

    Higher is more relevant; the core sorts.

    :param model: `LoadedModel.model`.
    :param request: a `RerankRequest` (a query, documents as strings; both non-empty).
    """
