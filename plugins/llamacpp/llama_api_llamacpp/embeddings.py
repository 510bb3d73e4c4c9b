"""Embeddings: pooled vectors of token sequences, several sequences per llama.cpp batch.

`decode_sequences` is the batch loop embeddings and the reranker share. The vectors leave
here at full width: the HTTP layer cuts them to a request's `dimensions`.
"""

from __future__ import annotations

from llama_api import errors
from llama_api.contract.records import EmbedResult


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
            tokens = model.check_ids(item, "input")
        if not tokens:
            raise errors.BadRequest(f"input {i} is empty", param="input")
        token_lists.append(tokens)
    import numpy as np

    matrix = np.stack(decode_sequences(model, token_lists, pooled_vectors(model),
                                       what="input", param="input"))
    if model.normalize:
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        matrix = matrix / np.maximum(norms, 1e-12)
    return EmbedResult(embeddings=matrix, prompt_tokens=sum(map(len, token_lists)))


def pooled_vectors(model):
    """A reader for `decode_sequences`: each sequence's pooled vector (the mean of its
    token vectors for a model without pooling). Like Llama.embed, but on token ids."""
    import numpy as np

    lib, ctx = model.lib, model.ctx
    n_embd = model.llm.n_embd()
    if model.llm.pooling_type() != lib.LLAMA_POOLING_TYPE_NONE:
        def read(sizes: list[int]) -> list:
            return [np.ctypeslib.as_array(lib.llama_get_embeddings_seq(ctx, seq),
                                          shape=(n_embd,)).copy()
                    for seq in range(len(sizes))]
        return read

    def mean_of_rows(sizes: list[int]) -> list:
        rows = np.ctypeslib.as_array(lib.llama_get_embeddings(ctx), shape=(sum(sizes), n_embd))
        ends = np.cumsum(sizes)
        return [rows[end - size:end].mean(axis=0) for size, end in zip(sizes, ends)]
    return mean_of_rows


def decode_sequences(model, token_lists: list[list[int]], read, what: str, param: str) -> list:
    """Decode each token list as a sequence of its own, packing as many as fit into each
    llama.cpp batch, and return what `read(sizes)` gives for each sequence after its batch
    is decoded (`sizes`: the token counts of that batch's sequences, in order; sequence
    ids count from 0 in every batch). Takes model.lock. A list longer than a batch or the
    context is a ContextLengthExceeded naming `what` {index} and `param`."""
    llm = model.llm
    limit = min(model.n_ctx, llm.n_batch)
    for i, tokens in enumerate(token_lists):
        if len(tokens) > limit:
            raise errors.ContextLengthExceeded(
                f"{what} {i} has {len(tokens)} tokens, but model {model.spec.id} reads at "
                f"most {limit} tokens per sequence", param=param)
    n_seq_max = max(1, int(llm.context_params.n_seq_max))
    out: list = []
    with model.lock:
        batch = llm._batch

        def flush(sizes: list[int]) -> None:
            llm._ctx.kv_cache_clear()
            llm._ctx.decode(batch)
            batch.reset()
            out.extend(read(sizes))

        batch.reset()
        sizes: list[int] = []
        try:
            for tokens in token_lists:
                if sizes and (sum(sizes) + len(tokens) > llm.n_batch or len(sizes) >= n_seq_max):
                    flush(sizes)
                    sizes = []
                batch.add_sequence(tokens, len(sizes), True)
                sizes.append(len(tokens))
            if sizes:
                flush(sizes)
        finally:
            batch.reset()
            llm._ctx.kv_cache_clear()
            llm.reset()
    return out
