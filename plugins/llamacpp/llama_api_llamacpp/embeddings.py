"""Embeddings: pooled vectors of token sequences, several sequences per llama.cpp batch."""

from __future__ import annotations

from llama_api import errors
from llama_api.types import EmbedResult


def embed(model, request) -> EmbedResult:
    if not model.embedding:
        raise errors.NotSupported(
            f"model {model.spec.id} was not loaded for embeddings; set the model option "
            "`embedding: true` (or use an embedding GGUF)")
    token_lists = []
    for i, item in enumerate(request.input):
        if isinstance(item, str):
            tokens = model.tokenize(item, add_bos=model.add_bos, special=False)
        else:
            tokens = [int(t) for t in item]
            if any(not 0 <= t < model.n_vocab for t in tokens):
                raise errors.BadRequest(f"input {i} has token ids out of range", param="input")
        if not tokens:
            raise errors.BadRequest(f"input {i} is empty", param="input")
        token_lists.append(tokens)
    limit = min(model.n_ctx, model.llm.n_batch)
    for i, tokens in enumerate(token_lists):
        if len(tokens) > limit:
            raise errors.ContextLengthExceeded(
                f"input {i} has {len(tokens)} tokens, but this model reads at most {limit} "
                "tokens per input", param="input")
    with model.lock:
        vectors = embed_tokens(model, token_lists)
    import numpy as np

    matrix = np.asarray(vectors, dtype=np.float32)
    if request.dimensions:
        matrix = matrix[:, : request.dimensions]
    if model.normalize:
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        matrix = matrix / np.maximum(norms, 1e-12)
    return EmbedResult(embeddings=matrix, prompt_tokens=sum(map(len, token_lists)))


def embed_tokens(model, token_lists):
    """Pooled vectors (mean-pools models without pooling), holding model.lock.
    Like Llama.embed, but on token ids."""
    import numpy as np

    llm, lib = model.llm, model.lib
    n_embd = llm.n_embd()
    n_batch = llm.n_batch
    n_seq_max = max(1, int(llm.context_params.n_seq_max))
    pooled = llm.pooling_type() != lib.LLAMA_POOLING_TYPE_NONE
    batch = llm._batch
    out = []

    def flush(sizes):
        llm._ctx.kv_cache_clear()
        llm._ctx.decode(batch)
        batch.reset()
        if pooled:
            for i in range(len(sizes)):
                ptr = lib.llama_get_embeddings_seq(model.ctx, i)
                out.append(np.ctypeslib.as_array(ptr, shape=(n_embd,)).copy())
        else:
            ptr = lib.llama_get_embeddings(model.ctx)
            rows = np.ctypeslib.as_array(ptr, shape=(sum(sizes), n_embd))
            pos = 0
            for size in sizes:
                out.append(rows[pos:pos + size].mean(axis=0))
                pos += size

    batch.reset()
    sizes: list[int] = []
    total = 0
    try:
        for tokens in token_lists:
            if sizes and (total + len(tokens) > n_batch or len(sizes) >= n_seq_max):
                flush(sizes)
                sizes, total = [], 0
            batch.add_sequence(tokens, len(sizes), True)
            sizes.append(len(tokens))
            total += len(tokens)
        if sizes:
            flush(sizes)
    finally:
        batch.reset()
        llm._ctx.kv_cache_clear()
        llm.reset()
    return np.stack(out)
