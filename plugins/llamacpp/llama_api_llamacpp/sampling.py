"""Sampling: a request's settings, its llama.cpp sampler chain, and token logprobs."""

from __future__ import annotations

import random

from llama_api.contract.records import EXTRA_SAMPLING_FIELDS, TokenLogprob, TopLogprob
from llama_api_llamacpp.options import SAMPLING_DEFAULTS

# The extra fields (request.extra) that set the sampler chain; `grammar` is a constraint
# (constraints.py).
EXTRA_SAMPLING = tuple(name for name in EXTRA_SAMPLING_FIELDS if name != "grammar")


def request_sampling(request, defaults: dict, default_seed: int | None) -> tuple[dict, int]:
    """The model's sampling defaults overridden by what the request sets, and a seed."""
    sampling = dict(defaults)
    for key in SAMPLING_DEFAULTS:
        value = getattr(request, key)
        if value is not None:
            sampling[key] = value
    extra = request.extra or {}
    for key in EXTRA_SAMPLING:
        if extra.get(key) is not None:
            sampling[key] = extra[key]
    seed = request.seed if request.seed is not None else default_seed
    if seed is None:
        seed = random.getrandbits(32)
    seed &= 0xFFFFFFFF
    if seed == 0xFFFFFFFF:  # llama.cpp reads this one as "pick a random seed"
        seed -= 1
    return sampling, seed


def forcing_sampler(n_vocab: int, token: int):
    """A sampler that picks `token` whatever the logits say: the tokens a run must write
    (the closing tag that ends a thinking budget) in place of one sample."""
    from llama_cpp import _internals as internals

    sampler = internals.LlamaSampler()
    sampler.add_logit_bias(n_vocab, {token: 1e30})
    sampler.add_greedy()
    return sampler


def build_sampler(model, sampling: dict, seed: int, grammar, logit_bias: dict | None):
    """The llama.cpp sampler chain for one request (native logit bias; penalties only
    when asked for)."""
    from llama_cpp import _internals as internals

    s = sampling
    sampler = internals.LlamaSampler()
    if logit_bias:
        sampler.add_logit_bias(model.n_vocab, logit_bias)
    repeat = float(s["repeat_penalty"])
    freq = float(s["frequency_penalty"])
    present = float(s["presence_penalty"])
    if repeat != 1.0 or freq != 0.0 or present != 0.0:
        sampler.add_penalties(n_vocab=model.n_vocab,
                              penalty_last_n=model.llm.last_n_tokens_size,
                              penalty_repeat=repeat, penalty_freq=freq, penalty_present=present)
    if grammar is not None:
        sampler.add_grammar(model.llm._model, grammar)
    temp = float(s["temperature"])
    mirostat = int(s.get("mirostat_mode", 0) or 0)
    if temp <= 0.0:
        sampler.add_greedy()
    elif mirostat in (1, 2):
        tau = float(s.get("mirostat_tau", 5.0))
        eta = float(s.get("mirostat_eta", 0.1))
        sampler.add_temp(temp)
        if mirostat == 1:
            sampler.add_mirostat(model.n_vocab, seed, tau, eta, 100)
        else:
            sampler.add_mirostat_v2(seed, tau, eta)
    else:
        sampler.add_top_k(int(s["top_k"]))
        typical = float(s.get("typical_p", 1.0))
        if typical < 1.0:
            sampler.add_typical(typical, 1)
        sampler.add_top_p(float(s["top_p"]), 1)
        sampler.add_min_p(float(s["min_p"]), 1)
        if s.get("xtc_probability"):
            sampler.add_xtc(float(s["xtc_probability"]), float(s.get("xtc_threshold", 0.1)),
                            1, seed)
        sampler.add_temp(temp)
        sampler.add_dist(seed)
    return sampler


def first_prompt_logprob(model, token: int) -> TokenLogprob:
    """The first prompt token: nothing precedes it, so it has no logprob."""
    piece = model.piece(token)
    return TokenLogprob(token=piece.decode("utf-8", errors="replace"), logprob=None,
                        bytes=list(piece))


def token_logprobs(model, token: int, ctx, index: int, top_k: int) -> list[TokenLogprob]:
    """`token`'s logprob at batch position `index` of `ctx`, and the `top_k` best."""
    import numpy as np

    piece = model.piece(token)
    ptr = model.lib.llama_get_logits_ith(ctx, index)
    logits = np.ctypeslib.as_array(ptr, shape=(model.n_vocab,)).astype(np.float64)
    top = logits.max()
    logsum = top + np.log(np.exp(logits - top).sum())
    chosen = float(logits[token] - logsum)
    alternatives = []
    if top_k > 0:
        k = min(top_k, model.n_vocab)
        ids = np.argpartition(-logits, k - 1)[:k]
        ids = ids[np.argsort(-logits[ids])]
        alternatives = [
            TopLogprob(model.piece(int(i)).decode("utf-8", errors="replace"),
                       float(logits[i] - logsum))
            for i in ids
        ]
    return [TokenLogprob(token=piece.decode("utf-8", errors="replace"), logprob=chosen,
                         top=alternatives, bytes=list(piece))]
