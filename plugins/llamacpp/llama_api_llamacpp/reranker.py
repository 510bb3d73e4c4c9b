"""GGUF rerankers (pooling type `rank`, e.g. bge-reranker): each (query, document) pair is
one sequence laid out as the model's tokenizer lays out a pair (`pair_tokens`); the rank
head's one output is the logit, turned into a score by a sigmoid, as sentence-transformers'
CrossEncoder scores the same model. Pairs share llama.cpp batches (one sequence each, `decode_sequences`).

Runs in the worker. Models loaded without rank pooling can't rerank: a 400 naming them.
"""

from __future__ import annotations

import math

from llama_api import errors
from llama_api.contract.records import RerankResult
from llama_api_llamacpp.embeddings import decode_sequences


def can_rerank(model) -> bool:
    return bool(model.embedding) and model.llm.pooling_type() == model.lib.LLAMA_POOLING_TYPE_RANK


def pair_tokens(model, query: list[int], document: list[int]) -> list[int]:
    """The pair as the model's tokenizer lays out two segments: BERT [CLS] q [SEP] d [SEP],
    XLM-RoBERTa <s> q </s></s> d </s> (a vocabulary without EOS closes with its SEP)."""
    lib, vocab = model.lib, model.vocab

    def special(token: int, added: bool) -> list[int]:
        return [token] if added and token >= 0 else []

    bos = special(lib.llama_vocab_bos(vocab), lib.llama_vocab_get_add_bos(vocab))
    eos = special(lib.llama_vocab_eos(vocab), lib.llama_vocab_get_add_eos(vocab))
    sep = special(lib.llama_vocab_sep(vocab), lib.llama_vocab_get_add_sep(vocab))
    return bos + query + (eos + sep if eos else sep) + document + (eos or sep)


def rerank(model, request) -> RerankResult:
    if not can_rerank(model):
        raise errors.NotSupported(
            f"model {model.spec.id} can't rerank: it is not a GGUF reranker loaded with "
            "pooling type rank (set the model options `embedding: true`, `pooling: rank` "
            "for a reranker GGUF)", param="model")
    query = model.tokenize(request.query, add_bos=False, special=False)
    pairs = [pair_tokens(model, query, model.tokenize(doc, add_bos=False, special=False))
             for doc in request.documents]
    lib, ctx = model.lib, model.ctx

    def rank_outputs(sizes: list[int]) -> list[float]:  # the rank head's one output each
        return [float(lib.llama_get_embeddings_seq(ctx, seq)[0]) for seq in range(len(sizes))]

    logits = decode_sequences(model, pairs, rank_outputs, what="the query with document",
                              param="documents")
    return RerankResult(scores=[1.0 / (1.0 + math.exp(-x)) for x in logits],
                        prompt_tokens=sum(map(len, pairs)))
