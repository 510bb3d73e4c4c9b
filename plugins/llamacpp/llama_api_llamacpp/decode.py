"""The decode loop: one token loop, fed by the plain path or by the batch engine.

A token source yields `(token, logprobs)` pairs, and first `(PROMPT, prompt logprobs)` when
the request echoes its prompt with logprobs. It ends at the model's end-of-generation token
(not yielded), setting the run's finish to `stop`: the batch engine checks for that token
in its own thread, so a token is checked once. The loop turns tokens into text (whole UTF-8
characters, stop strings held back, a thinking model's reasoning split from its answer),
counts them, and decides when the choice ends otherwise.
"""

from __future__ import annotations

import time
from collections import deque
from functools import partial

from llama_api.contract.records import Delta, Usage
from llama_api_llamacpp.batching import PROMPT, Sequence
from llama_api_llamacpp.sampling import (
    build_sampler,
    first_prompt_logprob,
    forcing_sampler,
    token_logprobs,
)
from llama_api_llamacpp.speculative import NgramDrafter
from llama_api_llamacpp.textstream import TextStream

# Prompts at least this long can be cancelled while llama.cpp reads them (plain path).
ABORTABLE_PROMPT = 64


class Run:
    """One generation: iterate for Deltas (text, reasoning, logprobs); then `final()` gives
    the last delta.

    `splitter`: a `ReasoningSplitter` when the model's thinking is split from the answer
    (None: all of it is text). `budget`: a `ThinkingBudget` that the token source asks,
    after each token, for the tokens to write next in place of samples.
    """

    def __init__(self, model, tokens, sampling, seed, grammar, logit_bias, stop, limit,
                 logprobs, cancelled, echo=None, splitter=None, budget=None):
        self.model = model
        self.tokens = tokens
        self.sampling = sampling
        self.seed = seed
        self.grammar = grammar
        self.logit_bias = logit_bias
        self.stream = TextStream(stop, drop_invalid=grammar is not None)
        self.limit = limit
        self.logprobs = logprobs
        self.cancelled = cancelled
        self.finish = "length"
        self.completion_tokens = 0
        # `echo`: the prompt text comes first, with the prompt tokens' logprobs when
        # logprobs are asked for (OpenAI's legacy completions: the first one has none).
        self.echo = echo
        self.prompt_logprobs = echo is not None and logprobs is not None
        self.splitter = splitter
        self.budget = budget

    @property
    def text(self) -> str:
        """All text generated so far, thinking included (stop strings left out)."""
        return self.stream.text

    def final(self, finish: str | None = None) -> Delta:
        return Delta(finish_reason=finish or self.finish, stop_sequence=self.stream.matched,
                     usage=Usage(
            prompt_tokens=len(self.tokens), completion_tokens=self.completion_tokens))

    def sampler(self):
        return build_sampler(self.model, self.sampling, self.seed, self.grammar,
                             self.logit_bias)

    def logprobs_fn(self):
        """(token, ctx, batch index) -> logprobs, or None when none are asked for."""
        if self.logprobs is None:
            return None
        return partial(token_logprobs, self.model, top_k=int(self.logprobs or 0))

    def __iter__(self):
        if self.echo and not self.prompt_logprobs:
            yield Delta(text=self.echo)
        if self.limit <= 0 and not self.prompt_logprobs:
            return
        model = self.model
        split = self.splitter.feed if self.splitter is not None else None
        source = batched_tokens(self) if model.engine is not None else plain_tokens(self)
        try:
            for token, lps in source:
                if token is PROMPT:
                    yield Delta(text=self.echo, logprobs=lps)
                else:
                    text, done = self._accept(token)
                    if split is None:
                        if text or lps:
                            yield Delta(text=text, logprobs=lps)
                    else:
                        reasoning, text = split(text) if text else ("", "")
                        if reasoning or text or lps:
                            yield Delta(reasoning=reasoning, text=text, logprobs=lps)
                    if done:
                        break
        finally:
            source.close()
        rest = self.stream.finish()
        if split is None:
            if rest:
                yield Delta(text=rest)
            return
        reasoning, text = split(rest)
        more_reasoning, more_text = self.splitter.flush()
        reasoning, text = reasoning + more_reasoning, text + more_text
        if reasoning or text:
            yield Delta(reasoning=reasoning, text=text)

    def _accept(self, token) -> tuple[str, bool]:
        """Count a sampled token; return the text now safe to send and whether to stop."""
        self.completion_tokens += 1
        text = self.stream.feed(self.model.piece(token))
        if self.stream.stopped:
            self.finish = "stop"
        elif self.completion_tokens >= self.limit:
            self.finish = "length"
        elif self.cancelled is not None and self.cancelled.is_set():
            self.finish = "stop"
        else:
            return text, False
        return text, True


def batched_tokens(run: Run):
    """Tokens that the batch engine samples for this run, among the other sequences."""
    engine = run.model.engine
    drafter = None
    if run.model.speculative == "ngram":
        drafter = NgramDrafter(run.tokens, run.model.draft_tokens)
    seq = Sequence(list(run.tokens), run.sampler(), run.limit, run.logprobs_fn(),
                   run.cancelled, prompt_logprobs=run.prompt_logprobs, drafter=drafter,
                   budget=run.budget)
    engine.submit(seq)
    try:
        for token, lps in engine.tokens(seq):
            if token is PROMPT:  # the engine scores prompt tokens 1..n-1
                lps = [first_prompt_logprob(run.model, run.tokens[0])] + lps
            yield token, lps
        if seq.ended:
            run.finish = "stop"
    finally:
        seq.stop()


def plain_tokens(run: Run):
    """Tokens from llama-cpp-python's high-level `generate` (it reuses the longest cached
    prompt prefix), holding the model's lock: one request at a time."""
    model = run.model
    llm = model.llm
    logprobs_fn = run.logprobs_fn()
    with model.lock:
        if run.prompt_logprobs:
            yield PROMPT, plain_prompt_logprobs(run)
        if run.limit <= 0:
            return
        # Our own sampler chain replaces Llama._init_sampler (generate() calls it on its
        # first step, and keeps it as `llm._sampler`: swapped below for a forced token).
        sampler = run.sampler()
        llm._init_sampler = lambda **_ignored: sampler
        forced: deque[int] = deque()  # what the budget has this run write next
        gen = llm.generate(run.tokens, reset=True)
        abortable = run.cancelled is not None and len(run.tokens) >= ABORTABLE_PROMPT
        if abortable:
            model.abort_on(run.cancelled)
        resumed = None  # when the loop asked for the next token (not the prompt's)
        is_end, vocab = model.lib.llama_vocab_is_eog, model.vocab
        try:
            for token in gen:
                if abortable:
                    model.abort_on(None)
                    abortable = False
                if resumed is not None:  # one decode and sample: a step for the tuner
                    model.threads.observe(time.perf_counter() - resumed, 1)
                if is_end(vocab, token):  # ends the choice with `stop`; not counted
                    run.finish = "stop"
                    return
                yield token, logprobs_fn(token, model.ctx, -1) if logprobs_fn else None
                if run.budget is not None:
                    forced.extend(run.budget.after(token))
                llm._sampler = (forcing_sampler(model.n_vocab, forced.popleft()) if forced
                                else sampler)
                resumed = time.perf_counter()
        except RuntimeError:
            if not (run.cancelled is not None and run.cancelled.is_set()):
                raise
            run.finish = "stop"  # llama.cpp aborted the prompt: the client is gone
        finally:
            if abortable:
                model.abort_on(None)
            gen.close()
            llm.__dict__.pop("_init_sampler", None)
            llm._sampler = None


def plain_prompt_logprobs(run: Run) -> list:
    """Decode the prompt with logits at every position (holding model.lock), and leave
    it in the KV cache so that generation decodes only its last token again."""
    model = run.model
    llm = model.llm
    tokens = run.tokens
    n = len(tokens)
    top_k = int(run.logprobs or 0)
    out = [first_prompt_logprob(model, tokens[0])]
    llm.reset()
    llm._ctx.kv_cache_clear()
    batch = llm._batch
    try:
        for start in range(0, n, llm.n_batch):
            chunk = tokens[start:start + llm.n_batch]
            batch.set_batch(chunk, n_past=start, logits_all=True)
            llm._ctx.decode(batch)
            for j in range(len(chunk)):
                if start + j + 1 < n:
                    out += token_logprobs(model, tokens[start + j + 1], model.ctx, j, top_k)
    except Exception:
        llm._ctx.kv_cache_clear()
        raise
    llm.input_ids[:n] = tokens
    llm.n_tokens = n
    llm._requires_eval = True  # the logits at hand are not the last token's alone
    return out
