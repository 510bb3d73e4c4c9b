"""llama-api plugin: sentence embeddings with transformers (PyTorch) and TensorFlow Hub.

This entry module is imported by the server to discover models, so it stays light:
torch, transformers, numpy and tensorflow are imported only inside `load_model`, in the
worker process that serves one model.
"""

from __future__ import annotations

from pathlib import Path

from llama_api.contract import BackendInfo, LoadedModel, ModelSpec, hookimpl
from llama_api_embeddings.common import BatchedEmbedResult

__all__ = ["BatchedEmbedResult"]
__version__ = "0.1.0"
LLAMA_API_CONTRACT = "1.0"

BACKENDS = ("transformers", "tfhub")


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
    if spec.backend == "tfhub":
        from llama_api_embeddings.tfhub_backend import TFHubEmbedder

        model = TFHubEmbedder(spec, context)
    else:
        from llama_api_embeddings import reranker

        if reranker.is_reranker(spec):
            model = reranker.CrossEncoderReranker(spec, context)
        else:
            from llama_api_embeddings.transformers_backend import TransformersEmbedder

            model = TransformersEmbedder(spec, context)
    return LoadedModel(model=model, slots=model.slots, info=model.info)


@hookimpl
def embed(model, request):
    return model.embed(request)


@hookimpl
def rerank(model, request):
    rerank = getattr(model, "rerank", None)  # a cross-encoder; None: the core refuses
    return rerank(request) if rerank is not None else None


@hookimpl
def tokenize(model, request):
    if getattr(model, "tokenizer", None) is None:  # TF Hub encoders keep theirs inside
        return None
    from llama_api_embeddings import tokens

    return tokens.tokenize(model, request)


@hookimpl
def detokenize(model, tokens):
    if getattr(model, "tokenizer", None) is None:
        return None
    from llama_api_embeddings.tokens import detokenize as spell

    return spell(model, tokens)


@hookimpl
def unload_model(model):
    model.close()


@hookimpl
def estimate_memory(spec, gpu):
    from llama_api_embeddings.memory import estimate_memory as estimate

    return estimate(spec, gpu)
