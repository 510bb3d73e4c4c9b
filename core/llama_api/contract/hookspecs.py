"""The hooks a backend plugin implements.

Discovery hooks run in the server process, so a plugin's entry module must stay
import-light. The backend hooks (load, unload, generate, embed, tokenize, detokenize,
rerank) run only in the worker process that serves one model, where heavy libraries
may be imported.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("llama_api")
hookimpl = pluggy.HookimplMarker("llama_api")


@hookspec
def register_backends():
    """Return the backends this plugin provides, as a list of `llama_api.contract.records.BackendInfo`."""


@hookspec
def discover_models(models_dir):
    """Return the models this plugin can serve from a folder, as a list of `ModelSpec`.

    :param models_dir: a `pathlib.Path` (it may not exist). Packaged default models
        (weights that a Python package ships) may be returned too.
    """


@hookspec(firstresult=True)
def estimate_memory(spec, gpu):
    """Return the bytes loading `spec` will take, as `(host, gpu)`; None if it isn't yours.

    Runs in the server process before a load, in a thread; the core keeps the answer until
    the spec or its file changes. Keep it cheap (file sizes, headers). Count the weights,
    caches and buffers, and what the backend's libraries add to a process; the core adds
    the bare worker. Stops at the first non-None result.

    :param spec: the `llama_api.contract.records.ModelSpec` about to load.
    :param gpu: whether the server has a GPU budget (a GPU detected, or
        `--max-gpu-memory` given): count what goes on the GPU only then. The core has
        detected it, so a plugin needn't (an implementation may take `spec` alone).
    """


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
    """Load a model whose `spec.backend` is one of yours and return it; else return None.

    Stops at the first non-None result. The returned object may carry `slots` (how many
    requests it runs at once, default 1), `info` (a dict shown in `/v1/models`; a change
    reaches the server after each request) and a `thread_budget(n)` method, which the
    server calls with the cores the worker may use now (it shares them among busy workers).
    Raise `llama_api.errors.ModelLoadError` with a clear message when the model can't load.

    :param spec: the `llama_api.contract.records.ModelSpec` to load.
    :param context: a `llama_api.contract.records.LoadContext` (thread budget, progress callback).
    """


@hookspec(firstresult=True)
def unload_model(model):
    """Free what `load_model` returned. Return True when handled.

    The worker process ends right after, so this is a courtesy for clean shutdown.

    :param model: the object `load_model` returned.
    """


@hookspec(firstresult=True)
def generate(model, request, cancelled):
    """Return an iterator of `llama_api.contract.records.Delta` for one completion or chat request.

    Stops at the first non-None result. Deltas carry text as it is generated; the last one
    carries `finish_reason` and `usage`. Raise `llama_api.errors.BadRequest` for bad input
    (prompt too long, no chat template) and `NotSupported` for what the backend can't do.

    :param model: the object `load_model` returned.
    :param request: a `llama_api.contract.records.GenerateRequest` (one prompt, one choice).
    :param cancelled: a `threading.Event` set when the client went away: stop before the next token.
    """


@hookspec(firstresult=True)
def embed(model, request):
    """Return a `llama_api.contract.records.EmbedResult` for a `llama_api.contract.records.EmbedRequest`.

    Stops at the first non-None result. May be called from several threads at once when
    the model has more than one slot (that is how a backend batches across requests).
    Return full-width vectors: the core applies `request.dimensions`.

    :param model: the object `load_model` returned.
    :param request: a `llama_api.contract.records.EmbedRequest`.
    """


@hookspec(firstresult=True)
def tokenize(model, request):
    """Return a `llama_api.contract.records.TokenizeResult` for a `llama_api.contract.records.TokenizeRequest`.

    Runs in the worker. Stops at the first non-None result; return None when the model
    has no tokenizer (the core answers 400 naming the model). Count tokens exactly as
    `generate` (or `embed`) would feed them to the model, chat template included.

    :param model: the object `load_model` returned.
    :param request: a `llama_api.contract.records.TokenizeRequest` (`text`, or `messages`).
    """


@hookspec(firstresult=True)
def detokenize(model, tokens):
    """Return the text that token ids spell (special tokens as their text), a `str`.

    Runs in the worker. Stops at the first non-None result; None: no tokenizer. Raise
    `llama_api.errors.BadRequest` for an id outside the vocabulary.

    :param model: the object `load_model` returned.
    :param tokens: a list of token ids (each >= 0, checked by the core).
    """


@hookspec(firstresult=True)
def rerank(model, request):
    """Return a `llama_api.contract.records.RerankResult`: one relevance score per document.

    Runs in the worker. Stops at the first non-None result; None: the model can't rerank
    (the core answers 400 naming it). Higher is more relevant; the core sorts.

    :param model: the object `load_model` returned.
    :param request: a `llama_api.contract.records.RerankRequest` (a query, documents as strings).
    """
