"""llama-api plugin: sentence embeddings with transformers (PyTorch) and TensorFlow Hub.

This entry module is imported by the server to discover models, so it stays light:
torch, transformers, numpy and tensorflow are imported only inside `load_model`, in the
worker process that serves one model.
"""

from __future__ import annotations

from pathlib import Path

from llama_api import hookimpl
from llama_api.contract.records import BackendInfo, ModelSpec
from llama_api_embeddings.common import BatchedEmbedResult

__all__ = ["BatchedEmbedResult"]
__version__ = "0.1.0"

BACKENDS = ("transformers", "tfhub")


def _ours(model) -> bool:
    return getattr(model, "backend", None) in BACKENDS and hasattr(model, "batcher")


@hookimpl
def register_backends():
    return [
        BackendInfo(
            name="transformers",
            description="Sentence embeddings with PyTorch + transformers (BERT, MPNet, "
            "XLM-RoBERTa, e5, bge, ...), pooled as sentence-transformers configures.",
        ),
        BackendInfo(
            name="tfhub",
            description="TensorFlow Hub / SavedModel sentence encoders such as "
            "universal-sentence-encoder (extra: llama-api-embeddings[tfhub]).",
        ),
    ]


@hookimpl
def discover_models(models_dir):
    from llama_api_embeddings import discovery, reranker

    found = reranker.mark_rerankers(discovery.discover(Path(models_dir)))
    return [ModelSpec(**spec) for spec in found]


@hookimpl
def prepare_worker():
    # torch and transformers take seconds to import; TensorFlow (tfhub) waits for its load
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        pass  # load_model says what is missing


@hookimpl
def load_model(spec, context):
    if spec.backend == "transformers":
        from llama_api_embeddings import reranker

        if reranker.is_reranker(spec):
            return reranker.CrossEncoderReranker(spec, context)
        from llama_api_embeddings.transformers_backend import TransformersEmbedder

        return TransformersEmbedder(spec, context)
    if spec.backend == "tfhub":
        from llama_api_embeddings.tfhub_backend import TFHubEmbedder

        return TFHubEmbedder(spec, context)
    return None


@hookimpl
def embed(model, request):
    if not _ours(model):
        return None
    return model.embed(request)


@hookimpl
def rerank(model, request):
    from llama_api_embeddings.reranker import CrossEncoderReranker

    if not isinstance(model, CrossEncoderReranker):
        return None
    return model.rerank(request)


def _has_tokenizer(model) -> bool:
    return _ours(model) and getattr(model, "tokenizer", None) is not None


@hookimpl
def tokenize(model, request):
    if not _has_tokenizer(model):
        return None
    from llama_api_embeddings import tokens

    return tokens.tokenize(model, request)


@hookimpl
def detokenize(model, tokens):
    if not _has_tokenizer(model):
        return None
    from llama_api_embeddings.tokens import detokenize as spell

    return spell(model, tokens)


@hookimpl
def unload_model(model):
    if not _ours(model):
        return None
    model.close()
    return True


@hookimpl
def estimate_memory(spec, gpu=False):
    # `gpu`: the server has a GPU budget (the core detected it); a default, so that a core
    # whose hook passes `spec` alone still calls this.
    if spec.backend not in BACKENDS:
        return None
    from llama_api_embeddings.memory import estimate_memory as estimate

    return estimate(spec, gpu)
