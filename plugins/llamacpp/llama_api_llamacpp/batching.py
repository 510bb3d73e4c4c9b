"""Continuous batching: several requests decoded together, one llama.cpp batch per step.

One engine thread owns a llama.cpp context with `n_parallel` sequences. Requests join and
leave between steps; each step decodes one new token for every running sequence (plus prompt
chunks of sequences just admitted) in a single `llama_decode`, then samples each sequence
with its own sampler chain. Request threads only read tokens from a queue.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import queue
import threading
import time
from bisect import insort
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llama_api import errors
from llama_api_llamacpp.sampling import forcing_sampler
from llama_api_llamacpp.vision import image_start, leading_tokens

log = logging.getLogger("llama_api_llamacpp")

_END = object()
# Sent first, as (PROMPT, logprobs of prompt tokens 1..n-1), to a sequence that asked for them.
PROMPT = object()


@contextlib.contextmanager
def _without_seq_overflow_warning(lib):
    """llama.cpp warns "n_ctx_seq > n_ctx_train -- possible training context overflow" for a
    unified cache bigger than the trained context; our own log line says why it can't
    happen here (each sequence is capped at its n_ctx). Other lines pass on as before."""
    from llama_cpp import _logger

    def forward(level, text, user_data):
        if b"possible training context overflow" not in (text or b""):
            _logger.llama_log_callback(level, text, user_data)

    callback = lib.llama_log_callback(forward)
    lib.llama_log_set(callback, ctypes.c_void_p(0))
    try:
        yield
    finally:
        lib.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


class Sequence:
    """One request inside the engine."""

    def __init__(self, tokens, sampler, limit, logprobs_fn, cancelled, prompt_logprobs=False,
                 drafter=None, budget=None):
        self.tokens = tokens  # prompt tokens still to decode
        self.sampler = sampler  # an internals.LlamaSampler (kept alive here)
        self.limit = limit
        self.logprobs_fn = logprobs_fn  # (token, ctx, batch index) -> logprobs, or None
        self.cancelled = cancelled
        self.out: queue.SimpleQueue = queue.SimpleQueue()
        self.seq_id = -1
        self.n_past = 0
        self.decoded: list[int] = []  # what this sequence put into its KV cells, in order
        self.generated = 0
        self.next_token = None
        self.stopped = False  # set by the reader (stop string found, client gone)
        # The model sampled an end-of-generation token: checked here, once; the token itself
        # is not sent, and the reader's choice ends with `stop`.
        self.ended = False
        # echo with logprobs: logits at every prompt position (no cached prefix reused)
        self.prompt_logprobs = prompt_logprobs
        self.prompt = list(tokens)
        self.prompt_lps: list = []
        self.drafter = drafter  # speculative.NgramDrafter, or None
        self.draft: list[int] = []  # drafted tokens decoded in this step after next_token
        # A thinking.ThinkingBudget, told each token; the tokens it asks for are written in
        # place of the next samples (`forced`).
        self.budget = budget
        self.forced: deque[int] = deque()

    def stop(self):
        self.stopped = True


@dataclass(frozen=True)
class EngineModel:
    """What the engine uses of the loaded model (backend.LlamaCppModel), and nothing more."""

    lib: Any  # the llama_cpp module: the C functions and constants
    weights: Any  # llama_cpp's LlamaModel: the loaded weights the engine's context reads
    context_params: Any  # the model's llama_context_params: the engine copies and adjusts them
    vocab: Any  # the llama_vocab pointer
    n_vocab: int
    name: str  # the model's id, for the log
    # Told each decode's seconds and tokens (ThreadTuner.observe: the thread count adapts).
    observe: Callable[[float, int], None]
    vision: Any = None  # vision.Vision: decodes the images of prompts (None: text only)


class BatchEngine:
    """Decodes up to `n_parallel` requests together, on a llama.cpp context of its own.

    The engine owns that context (one KV sequence per slot), the llama_batch it fills each
    step, its slots, and the prompt prefix each free slot keeps cached for the next request.
    One daemon thread ("llamacpp-batch", `_loop`) admits submitted sequences into free slots,
    decodes each step's batch, samples every sequence and puts its tokens on its queue; only
    that thread changes the context and the slots. Request threads `submit` a Sequence (put
    on `incoming` under `wake`) and read its tokens with `tokens`; `close` ends the requests
    in flight, stops the thread, then frees the batch and the context.
    """

    def __init__(self, model: EngineModel, n_parallel: int, n_ctx_per_seq: int,
                 n_batch: int = 512, unified: bool = True, prefill_chunk: int = 128,
                 flash_attn: str = "auto"):
        lib = model.lib
        from llama_cpp import _internals as internals

        self.lib = lib
        self.vocab = model.vocab
        self.n_vocab = model.n_vocab
        self._observe = model.observe
        self.vision = model.vision
        self.n_parallel = n_parallel
        params = type(model.context_params).from_buffer_copy(model.context_params)
        params.n_ctx = n_ctx_per_seq * n_parallel
        params.n_seq_max = n_parallel
        params.n_batch = max(n_batch, n_parallel)
        params.n_ubatch = min(int(params.n_batch), max(int(params.n_ubatch), 512))
        # One KV buffer shared by all sequences (llama.cpp attends over it in one op): on 2
        # CPU cores 4 streams decode ~1.5x faster than with a buffer per sequence. It can't
        # overflow: every sequence (and a finished one's cached prefix) holds at most
        # n_ctx_per_seq cells of the n_parallel * n_ctx_per_seq.
        # With a unified buffer llama.cpp lets each sequence address all of it (n_ctx_seq
        # = n_parallel * n_ctx_per_seq) and warns when that passes the trained context; but
        # `submit` caps every sequence at n_ctx_per_seq positions (prompt + completion).
        params.kv_unified = bool(unified)
        self.unified = bool(unified)
        self.n_ctx_per_seq = n_ctx_per_seq
        params.embeddings = False
        params.flash_attn_type = {"on": lib.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                                  "off": lib.LLAMA_FLASH_ATTN_TYPE_DISABLED,
                                  }.get(flash_attn, lib.LLAMA_FLASH_ATTN_TYPE_AUTO)
        self.n_batch = int(params.n_batch)
        self.prefill_chunk = max(1, prefill_chunk)  # prompt tokens per step beside streams
        with _without_seq_overflow_warning(lib):
            self.context = internals.LlamaContext(model=model.weights, params=params,
                                                  verbose=False)
        self.ctx = self.context.ctx
        self.memory = lib.llama_get_memory(self.ctx)
        self.batch = lib.llama_batch_init(self.n_batch, 0, 1)
        self.incoming: deque[Sequence] = deque()
        self.wake = threading.Condition()
        self.closed = False
        self.free = list(range(n_parallel - 1, -1, -1))
        # What each sequence slot's KV cells hold, for reusing a common prompt prefix.
        self.cached: list[list[int]] = [[] for _ in range(n_parallel)]
        self.reused_tokens = 0  # prompt tokens not decoded again thanks to the cache
        self.drafted = self.accepted = 0  # speculative tokens decoded, and kept
        log.info("%s: %d sequences decode together, %s KV cache of %d cells; each sequence "
                 "is capped at n_ctx=%d tokens (trained context %d)",
                 model.name, n_parallel, "one shared" if unified else "a per-sequence",
                 int(params.n_ctx), n_ctx_per_seq, model.weights.n_ctx_train())
        self.thread = threading.Thread(target=self._loop, name="llamacpp-batch", daemon=True)
        self.thread.start()

    # -- request side ------------------------------------------------------------------

    def submit(self, seq: Sequence) -> Sequence:
        if len(seq.tokens) + max(seq.limit, 0) > self.n_ctx_per_seq:
            raise errors.ContextLengthExceeded(
                f"{len(seq.tokens)} prompt tokens + {seq.limit} to generate pass this model's "
                f"context of {self.n_ctx_per_seq} tokens")
        with self.wake:
            if self.closed:
                raise errors.BackendUnavailable("the model is shutting down")
            self.incoming.append(seq)
            self.wake.notify()
        return seq

    def tokens(self, seq: Sequence):
        """Yield (token, logprobs) as the engine samples them; stop when the engine ends it
        (`seq.ended`: at the model's end-of-generation token, which is not yielded)."""
        while True:
            try:
                item = seq.out.get(timeout=1.0)
            except queue.Empty:
                if not self.thread.is_alive():
                    raise errors.WorkerCrashed("the batch engine stopped") from None
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self):
        with self.wake:
            self.closed = True
            self.wake.notify()
        self.thread.join(timeout=30)
        self.lib.llama_batch_free(self.batch)
        self.context.close()

    # -- engine thread -----------------------------------------------------------------

    def _admit(self, seq: Sequence) -> None:
        """Give a sequence the free slot whose cache shares the longest prefix with it."""
        prompt = seq.tokens

        def common(slot):
            n = 0
            for a, b in zip(self.cached[slot], prompt):
                if a != b:
                    break
                n += 1
            return n

        slot = max(self.free, key=common)
        self.free.remove(slot)
        keep = min(common(slot), len(prompt) - 1)  # decode at least one token for logits
        keep = image_start(prompt, keep)
        if seq.prompt_logprobs:
            keep = 0
        if keep <= 0 or not self.lib.llama_memory_seq_rm(self.memory, slot, keep, -1):
            self.lib.llama_memory_seq_rm(self.memory, slot, -1, -1)
            keep = 0
        self.cached[slot] = []
        self.reused_tokens += keep
        seq.seq_id = slot
        seq.n_past = keep
        seq.decoded = list(prompt[:keep])
        seq.tokens = prompt[keep:]

    def _finish(self, seq: Sequence, item=_END):
        if seq.seq_id >= 0:
            if item is _END:  # keep the KV cells for a later request with the same prefix
                self.cached[seq.seq_id] = seq.decoded
            else:
                self.lib.llama_memory_seq_rm(self.memory, seq.seq_id, -1, -1)
            self.free.append(seq.seq_id)
            seq.seq_id = -1
        if item is not _END:
            seq.out.put(item)
        seq.out.put(_END)

    def _drop_cached(self) -> bool:
        """Free the KV cells finished sequences left for prefix reuse; True if there were any."""
        dropped = False
        for slot in self.free:
            if self.cached[slot]:
                self.lib.llama_memory_seq_rm(self.memory, slot, -1, -1)
                self.cached[slot] = []
                dropped = True
        return dropped

    def _loop(self):
        active: list[Sequence] = []
        while True:
            try:
                if self._run(active):
                    return
            except Exception as exc:  # fail the requests in flight, keep serving the rest
                log.exception("batch engine step failed")
                for seq in active:
                    self._finish(seq, errors.LlamaApiError(f"generation failed: {exc}"))
                active.clear()

    def _run(self, active: list[Sequence]) -> bool:
        """Run steps until closed (True); an exception escapes to `_loop`."""
        batch = self.batch
        while True:
            with self.wake:
                while not self.closed and not self.incoming and not active:
                    self.wake.wait()
                if self.closed:
                    for seq in active + list(self.incoming):
                        self._finish(seq, errors.BackendUnavailable("the model was unloaded"))
                    return True
                while self.incoming and self.free:
                    seq = self.incoming.popleft()
                    self._admit(seq)
                    # Kept in sequence id order, as tokens go into the batch: with a KV buffer
                    # per sequence llama.cpp puts only consecutive ids in one micro-batch, so
                    # 4 streams in the order 3, 2, 1, 0 took 4 graph runs per step.
                    insort(active, seq, key=lambda s: s.seq_id)
            # drop what the readers gave up on
            for seq in [s for s in active if s.stopped or s.cancelled.is_set()]:
                active.remove(seq)
                self._finish(seq)
            if not active:
                continue
            if self.vision is not None:  # images first, each whole, on their own
                self.vision.decode_images(self, active)
            lib = self.lib
            # one token for every running sequence, then prompt chunks while there is room
            n = 0
            outputs: list[tuple[int, Sequence]] = []
            for seq in active:
                if seq.next_token is not None:
                    self._add(batch, n, seq.next_token, seq.n_past, seq.seq_id, True)
                    seq.decoded.append(seq.next_token)
                    seq.n_past += 1
                    seq.next_token = None
                    outputs.append((n, seq))
                    n += 1
                    if seq.drafter is not None:  # its draft follows, each with logits
                        room = min(self.n_batch - n, seq.limit - seq.generated - 1)
                        seq.draft = seq.drafter.draft()[:max(0, room)]
                        self.drafted += len(seq.draft)
                        for j, token in enumerate(seq.draft):
                            self._add(batch, n, token, seq.n_past + j, seq.seq_id, True)
                            n += 1
            scored: list[tuple[int, Sequence, int]] = []  # (batch index, seq, next token)
            # Prompts fill the rest of the batch; while streams run, only a chunk per step,
            # so that a long prompt delays their next token by one chunk's decode at most.
            room = self.n_batch - n if n == 0 else min(self.n_batch - n, self.prefill_chunk)
            for seq in active:
                if not seq.tokens or room <= 0:
                    continue
                take = min(len(seq.tokens), room)
                if self.vision is not None:  # text up to the next image
                    take = min(take, leading_tokens(seq.tokens))
                room -= take
                chunk, seq.tokens = seq.tokens[:take], seq.tokens[take:]
                seq.decoded.extend(chunk)
                for j, token in enumerate(chunk):
                    last = j == take - 1 and not seq.tokens
                    if seq.prompt_logprobs and not last:
                        scored.append((n, seq, seq.prompt[seq.n_past + 1]))
                    self._add(batch, n, token, seq.n_past, seq.seq_id,
                              last or seq.prompt_logprobs)
                    seq.n_past += 1
                    if last:
                        outputs.append((n, seq))
                    n += 1
            batch.n_tokens = n
            if n == 0:
                continue
            started = time.perf_counter()
            status = lib.llama_decode(self.ctx, batch)
            if status == 0:
                self._observe(time.perf_counter() - started, n)
            if status == 1 and self._drop_cached():  # no room: forget the cached prefixes
                status = lib.llama_decode(self.ctx, batch)
            if status != 0:
                error = errors.LlamaApiError(
                    "the KV cache is full" if status == 1 else f"llama_decode failed ({status})")
                for seq in active:
                    self._finish(seq, error)
                active.clear()
                continue
            for index, seq, token in scored:
                if seq in active:
                    try:
                        seq.prompt_lps += seq.logprobs_fn(token, self.ctx, index)
                    except Exception as exc:  # noqa: BLE001 -- fails this request only
                        active.remove(seq)
                        self._finish(seq, exc)
            for index, seq in outputs:
                if seq not in active:
                    continue
                if seq.prompt_logprobs and seq.generated == 0:  # its prompt is done
                    seq.out.put((PROMPT, seq.prompt_lps))
                    if seq.limit <= 0:  # echo only
                        active.remove(seq)
                        self._finish(seq)
                        continue
                if not self._sample(seq, index):
                    active.remove(seq)

    def _sample(self, seq: Sequence, index: int) -> bool:
        """Sample the sequence's next token at batch `index`, then on through its draft
        while the draft holds what was sampled; False when the sequence ended here."""
        lib = self.lib
        draft, seq.draft = seq.draft, []
        for j in range(len(draft) + 1):
            try:
                sampler = (forcing_sampler(self.n_vocab, seq.forced.popleft()) if seq.forced
                           else seq.sampler)
                token = lib.llama_sampler_sample(sampler.sampler, self.ctx, index + j)
                ended = seq.ended = bool(lib.llama_vocab_is_eog(self.vocab, token))
                if not ended:
                    seq.out.put((token, seq.logprobs_fn(token, self.ctx, index + j)
                                 if seq.logprobs_fn else None))
            except Exception as exc:  # noqa: BLE001 -- never let one request kill the engine
                self._finish(seq, exc)
                return False
            if not ended:
                seq.generated += 1
                ended = seq.generated >= seq.limit
                if seq.drafter is not None:
                    seq.drafter.extend((token,))
                if seq.budget is not None:
                    seq.forced.extend(seq.budget.after(token))
            if not ended and j < len(draft) and token == draft[j]:
                seq.decoded.append(token)  # its drafted cell holds the right token
                self.accepted += 1
                seq.n_past += 1
                continue
            if j < len(draft):  # the rest of the draft was wrong: forget its cells
                lib.llama_memory_seq_rm(self.memory, seq.seq_id, seq.n_past, -1)
            if ended:
                self._finish(seq)
                return False
            seq.next_token = token
            return True
        return True

    @staticmethod
    def _add(batch, i, token, pos, seq_id, logits):
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq_id
        batch.logits[i] = logits

