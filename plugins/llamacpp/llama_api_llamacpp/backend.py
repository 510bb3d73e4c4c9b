"""The llama.cpp backend proper: runs in the worker process only (imports llama_cpp lazily).

`load` reads the options, loads the GGUF and returns a `LlamaCppModel`; its `generate`
composes the jobs kept in their own modules: prompts, constraints, the decode loop, tool
calls; `embed` is in embeddings.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from pathlib import Path

from llama_api import errors
from llama_api.text.chat_template import ChatTemplate
from llama_api_llamacpp import embeddings
from llama_api_llamacpp.constraints import Grammars
from llama_api_llamacpp.decode import Run
from llama_api_llamacpp.gguf_meta import EMBEDDING_ARCHS, GGUFError, read_kv, summarize
from llama_api_llamacpp.options import LoadOptions, parse_options
from llama_api_llamacpp.prompts import ChatPrompt, PromptBuilder, named_format
from llama_api_llamacpp.sampling import request_sampling
from llama_api_llamacpp.thinking import prompt_opens, splitter_for, thinking_budget
from llama_api_llamacpp.threads import ThreadTuner
from llama_api_llamacpp.tools import tool_deltas
from llama_api_llamacpp.vision import Vision, pair_info

log = logging.getLogger("llama_api_llamacpp")


def import_llama_cpp():
    try:
        import llama_cpp
    except ImportError as exc:
        raise errors.ModelLoadError(
            "the llamacpp backend needs llama-cpp-python: pip install llama-cpp-python "
            f"({exc})"
        ) from exc
    return llama_cpp


def load(spec, context) -> LlamaCppModel:
    llama_cpp = import_llama_cpp()
    path = Path(spec.path)
    if not path.is_file():
        raise errors.ModelLoadError(f"model file not found: {path}")
    try:
        kv = read_kv(path)
    except (GGUFError, OSError) as exc:
        raise errors.ModelLoadError(f"{path} is not a valid GGUF file: {exc}") from exc
    meta = summarize(kv)
    options = parse_options(spec, kv, meta, context.n_threads)
    kv_mb = options.kv_cache_mb
    context.report(f"loading {path.name} (n_ctx={options.n_ctx}, threads={options.n_threads}, "
                   f"parallel={options.n_parallel}"
                   + (f", KV cache {kv_mb:.0f} MB" if kv_mb is not None else "") + ")", 0.0)
    try:
        with _no_library_chat_handlers():
            llm = llama_cpp.Llama(**options.llama_params,
                                  flash_attn=_plain_flash_attn(llama_cpp, options.flash_attn))
    except Exception as exc:  # llama.cpp says only "Failed to load model from file"
        raise errors.ModelLoadError(
            f"llama.cpp could not load {path}: {exc} (corrupt or unsupported GGUF: "
            f"architecture {meta.get('architecture') or 'unknown'!r})"
        ) from exc
    try:
        model = LlamaCppModel(llm, llama_cpp, spec, meta, options)
    except Exception:
        llm.close()
        raise
    model.info["kv_cache_mb"] = round(kv_mb, 1) if kv_mb is not None else None
    context.report(f"loaded {path.name}" + (f" with the projector {model.vision.path.name} "
                                            "(images in)" if model.vision else ""), 1.0)
    return model


def _plain_flash_attn(llama_cpp, mode: str) -> bool:
    """`Llama` takes only on or off. "auto" is on where llama.cpp runs on the CPU alone
    (its CPU backend has flash attention for every model); a GPU build leaves it to the
    batch engine's context, which passes "auto" to llama.cpp."""
    return mode == "on" or (mode == "auto" and not llama_cpp.llama_supports_gpu_offload())


class _UnusedChatHandler:
    def __init__(self, *args, **kwargs):
        pass

    def to_chat_handler(self):
        return None


@contextlib.contextmanager
def _no_library_chat_handlers():
    """`Llama.__init__` compiles every chat template of the GGUF into a chat handler (its
    own Jinja environment) that only its `create_chat_completion` uses. We render with the
    core's ChatTemplate, so the template is compiled once, by us. No constructor argument
    turns that loop off; loading runs on the worker's one thread, before any request."""
    from llama_cpp import llama_chat_format

    real = llama_chat_format.Jinja2ChatFormatter
    llama_chat_format.Jinja2ChatFormatter = _UnusedChatHandler
    try:
        yield
    finally:
        llama_chat_format.Jinja2ChatFormatter = real


class LlamaCppModel:
    """One loaded GGUF model. llama.cpp contexts are not thread-safe: the plain path runs
    one request at a time (`lock`); the batch engine's thread owns its own context."""

    slots = 1
    engine = None

    def __init__(self, llm, llama_cpp, spec, meta, options: LoadOptions):
        self.llm = llm
        self.lib = llama_cpp
        self.spec = spec
        self.lock = threading.Lock()
        self._piece_lock = threading.Lock()
        self.embedding = options.embedding
        # Encoder architectures (BERT...) have no language-model head: embeddings only.
        self.embedding_only = meta.get("architecture") in EMBEDDING_ARCHS
        self.normalize = options.normalize
        self.n_ctx = options.n_ctx if options.uses_engine else llm.n_ctx()
        self.n_vocab = llm.n_vocab()
        self.vocab = llm._model.vocab
        self.ctx = llm._ctx.ctx
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.sampling = options.sampling
        self.default_seed = options.default_seed
        self.completion_max_tokens = options.completion_max_tokens
        self.speculative = options.speculative
        self.draft_tokens = options.draft_tokens
        self._pieces: dict[int, bytes] = {}
        self._special_pieces: dict[int, bytes] = {}  # piece(token, special=True)
        # Cancel during a long prompt: llama.cpp polls this between graph nodes. It is set only
        # while a prompt is decoded (a Python call per node would slow every token down).
        self._abort_event: threading.Event | None = None
        self._abort_cb = llama_cpp.ggml_abort_callback(
            lambda _data: self._abort_event is not None and self._abort_event.is_set())
        self._piece_buf = ctypes.create_string_buffer(256)
        self.bos_text = self._token_text(llama_cpp.llama_vocab_bos(self.vocab))
        self.eos_text = self._token_text(llama_cpp.llama_vocab_eos(self.vocab))
        template = None
        if options.chat_template:
            template = ChatTemplate(options.chat_template, bos_token=self.bos_text,
                                    eos_token=self.eos_text)
        formatter = named_format(spec.id, options.chat_format) if options.chat_format else None
        self.prompts = PromptBuilder(spec.id, template, formatter, self.control_spellings)
        self.grammars = Grammars(llama_cpp, self.vocab)
        self.reasoning_tags = options.reasoning_tags
        self.close_tag_tokens: list[int] = []  # what ends a spent thinking budget
        if self.reasoning_tags is not None:
            self._show_tag_tokens(self.reasoning_tags)
            self.close_tag_tokens = self.tokenize(self.reasoning_tags.close, add_bos=False,
                                                  special=True)
        # Fill in the middle: the model's prefix, suffix and middle tokens (all or none).
        fim = (llama_cpp.llama_vocab_fim_pre(self.vocab),
               llama_cpp.llama_vocab_fim_suf(self.vocab),
               llama_cpp.llama_vocab_fim_mid(self.vocab))
        self.fim_tokens = fim if min(fim) >= 0 else None
        self.info = {
            "backend": "llamacpp",
            "architecture": meta.get("architecture"),
            "n_ctx": self.n_ctx,
            "n_ctx_train": llm._model.n_ctx_train(),
            "n_threads": llm.context_params.n_threads,  # the current count (threads.py)
            "threads": "auto" if options.threads_auto else "fixed",
            "max_threads": options.max_threads,
            "embedding": self.embedding,
            "chat_template": self.prompts.can_chat,
            "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
            "n_parallel": options.n_parallel,
            "reasoning_tags": [self.reasoning_tags.open, self.reasoning_tags.close]
            if self.reasoning_tags else None,
            "fill_in_middle": self.fim_tokens is not None,
            "flash_attn": options.flash_attn,
        }
        self._n_threads_batch = options.n_threads_batch
        self.threads = ThreadTuner(options.n_threads, options.max_threads, self._set_threads,
                                   name=spec.id, auto=options.threads_auto)
        self.vision = None
        if options.mmproj:
            gpu = bool(llama_cpp.llama_supports_gpu_offload()) and options.llama_params.get(
                "n_gpu_layers", -1) != 0
            self.vision = Vision(options.mmproj, llm, options.n_threads, gpu, spec.id)
        self.info.update(pair_info(self.vision))
        if options.uses_engine:
            from llama_api_llamacpp.batching import BatchEngine, EngineModel

            for_engine = EngineModel(lib=llama_cpp, weights=llm._model,
                                     context_params=llm.context_params, vocab=self.vocab,
                                     n_vocab=self.n_vocab, name=spec.id,
                                     observe=self.threads.observe, vision=self.vision)
            self.engine = BatchEngine(for_engine, options.n_parallel, self.n_ctx,
                                      n_batch=options.n_batch, unified=options.kv_unified,
                                      prefill_chunk=options.prefill_chunk,
                                      flash_attn=options.flash_attn)
            self.slots = options.n_parallel
            self.info["kv_unified"] = self.engine.unified
            self.info["prefill_chunk"] = options.prefill_chunk
            self.info["speculative"] = options.speculative

    # -- helpers ---------------------------------------------------------------------------

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        raw = self.lib.llama_vocab_get_text(self.vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""

    def piece(self, token: int, special: bool = False) -> bytes:
        """A token's bytes; special tokens render as nothing unless `special` (their text)."""
        cache = self._special_pieces if special else self._pieces
        cached = cache.get(token)
        if cached is None:
            cached = self._token_piece(token, special)
            cache[token] = cached
        return cached

    def _token_piece(self, token: int, special: bool) -> bytes:
        """Ask llama.cpp once per token (cached by `piece`): a negative answer is the size
        a piece longer than the buffer needs, asked again with that size."""
        with self._piece_lock:
            n = self.lib.llama_token_to_piece(self.vocab, token, self._piece_buf,
                                              len(self._piece_buf), 0, special)
            if n >= 0:
                return self._piece_buf.raw[:n]
        buffer = ctypes.create_string_buffer(-n)
        n = self.lib.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, special)
        return buffer.raw[:max(n, 0)]

    def check_ids(self, ids, param: str) -> list[int]:
        """Token ids a client sent, as a list; a 400 naming `param` for one this vocabulary
        lacks (the core has checked that they are >= 0)."""
        bad = [token for token in ids if not 0 <= token < self.n_vocab]
        if bad:
            raise errors.BadRequest(f"token id {bad[0]} is out of range: model {self.spec.id} "
                                    f"has {self.n_vocab} tokens", param=param)
        return list(ids)

    def _show_tag_tokens(self, tags) -> None:
        """Thinking tags that are special tokens of their own (which `piece` renders as
        nothing) render as their text, so that the splitter sees them."""
        for tag in (tags.open, tags.close):
            ids = self.tokenize(tag, add_bos=False, special=True)
            if len(ids) == 1 and not self.piece(ids[0]):
                self._pieces[ids[0]] = tag.encode("utf-8")

    def thread_budget(self, threads: int) -> None:
        """The cores the server lets this worker use now (it shares them among busy workers):
        the tuner stays within them from the next step on."""
        self.threads.budget = threads

    def _set_threads(self, n: int) -> None:
        """Decode with n threads from the next step on (called between steps)."""
        ctx = self.engine.ctx if self.engine is not None else self.ctx
        self.lib.llama_set_n_threads(ctx, n, self._n_threads_batch or n)
        self.info["n_threads"] = self.threads.current  # a count being tried is not shown

    def abort_on(self, event) -> None:
        """Let llama.cpp abort the current decode when `event` is set (None: never)."""
        self._abort_event = event
        callback = self._abort_cb if event is not None else self.lib.ggml_abort_callback()
        self.lib.llama_set_abort_callback(self.ctx, callback, None)

    def tokenize(self, text: str, add_bos: bool, special: bool) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def prompt_tokens(self, text: str, special: bool = True, add_bos: bool = True) -> list[int]:
        """A prompt's tokens, BOS first where the model wants one and the text has none
        (`add_bos` False: never)."""
        add_bos = add_bos and self.add_bos and not (self.bos_text and
                                                    text.startswith(self.bos_text))
        return self.tokenize(text, add_bos=add_bos, special=special)

    def chat_tokens(self, prompt: ChatPrompt, add_bos: bool = True) -> list[int]:
        """A rendered chat prompt's tokens: control tokens only where the template wrote them
        (a client's text is plain, even where it spells one)."""
        first, *rest = prompt.pieces
        tokens = self.prompt_tokens(first.text, special=first.special, add_bos=add_bos)
        for piece in rest:
            tokens += self.tokenize(piece.text, add_bos=False, special=piece.special)
        return tokens

    def chat_items(self, prompt: ChatPrompt, images, add_bos: bool = True) -> list:
        """`chat_tokens`, with each image in its place (vision.py; a text-only model: 400)."""
        if not images:
            return self.chat_tokens(prompt, add_bos=add_bos)
        if self.vision is None:
            raise errors.NotSupported(f"model {self.spec.id} does not take images (it was "
                                      "loaded without a projector)", param="messages")
        return self.vision.items(self, prompt.pieces, images, add_bos=add_bos)

    def control_spellings(self) -> list[str]:
        """The text of every control token: what special-token parsing would turn into one.
        Asked once, by the first chat prompt (a pass over the vocabulary)."""
        lib, vocab = self.lib, self.vocab
        special = lib.LLAMA_TOKEN_ATTR_CONTROL | lib.LLAMA_TOKEN_ATTR_UNKNOWN
        return [self._token_text(token) for token in range(self.n_vocab)
                if lib.llama_vocab_get_attr(vocab, token) & special]

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        if self.vision is not None:
            self.vision.close()
        with self.lock:
            try:
                self.llm.close()
            except Exception:
                log.exception("closing the model failed")

    # -- requests --------------------------------------------------------------------------

    def generate(self, request, cancelled):
        if self.embedding_only:
            raise errors.NotSupported(
                f"model {self.spec.id} is an embedding model ({self.info['architecture']}); "
                "use /v1/embeddings")
        constraint = self.grammars.constraint(request)
        tokens, stop, echo, thinking_open = self._prompt(request, constraint)
        sampling, seed = request_sampling(request, self.sampling, self.default_seed)
        splitter = splitter_for(request, self.reasoning_tags, thinking_open,
                                constraint.free_form)
        run = Run(self, tokens, sampling, seed, constraint.grammar,
                  self._logit_bias(request.logit_bias),
                  stop if constraint.streams_text else [], self._limit(request, len(tokens)),
                  request.logprobs, cancelled, echo=echo, splitter=splitter,
                  budget=thinking_budget(self, request, splitter, thinking_open))
        if constraint.tool_mode is None:
            return _text_deltas(run)
        return tool_deltas(run, constraint.tool_mode, constraint.tool_name,
                           constraint.tool_names, parallel=constraint.parallel)

    def embed(self, request):
        return embeddings.embed(self, request)

    def _prompt(self, request, constraint) -> tuple[list[int], list[str], str | None, bool]:
        """The prompt's tokens, the stop strings, the text to echo (completions), and
        whether the prompt opens the model's thinking tag."""
        stop = list(request.stop)
        echo = None
        thinking_open = False
        if request.messages is not None:
            prompt = self.prompts.render(request.messages, constraint.tools,
                                         constraint.tool_name, request.think)
            stop += prompt.stops
            tokens = self.chat_items(prompt, getattr(request, "images", None))
            thinking_open = self.reasoning_tags is not None and prompt_opens(
                prompt.text, self.reasoning_tags)
        elif request.suffix is not None:
            tokens = self._infill_tokens(request.prompt, request.suffix)
            if request.echo:
                echo = self._prompt_text(request.prompt)
        elif isinstance(request.prompt, list):
            tokens = self.check_ids(request.prompt, "prompt")
            if request.echo:
                echo = self._prompt_text(tokens)
        else:
            echo = (request.prompt or "") if request.echo else None
            tokens = self.prompt_tokens(request.prompt or "", special=request.parse_special)
        if not tokens:
            tokens = [self.lib.llama_vocab_bos(self.vocab)]
        if len(tokens) >= self.n_ctx:
            raise errors.ContextLengthExceeded(
                f"this model's context is {self.n_ctx} tokens, but the prompt has "
                f"{len(tokens)} tokens; shorten the prompt or load the model with a larger "
                "n_ctx", param="messages" if request.messages is not None else "prompt")
        return tokens, stop, echo, thinking_open

    def _prompt_text(self, prompt: str | list[int] | None) -> str:
        if isinstance(prompt, list):
            return self.llm.detokenize(prompt).decode("utf-8", errors="replace")
        return prompt or ""

    def _infill_tokens(self, prefix: str | list[int] | None, suffix: str) -> list[int]:
        """A fill-in-the-middle prompt, laid out as llama.cpp's /infill does (prefix first):
        [BOS] FIM_PRE prefix FIM_SUF suffix FIM_MID; the model writes the middle.
        The texts are read as plain text: a FIM token spelled out in code stays text."""
        if self.fim_tokens is None:
            raise errors.NotSupported(
                f"model {self.spec.id} can't fill in the middle: its vocabulary has no FIM "
                "(prefix/suffix/middle) tokens", param="suffix")
        pre, suf, mid = self.fim_tokens
        if isinstance(prefix, list):
            prefix_ids = self.check_ids(prefix, "prompt")
        else:
            prefix_ids = self.tokenize(prefix or "", add_bos=False, special=False)
        suffix_ids = self.tokenize(suffix, add_bos=False, special=False)
        bos = [self.lib.llama_vocab_bos(self.vocab)] if self.add_bos else []
        return bos + [pre] + prefix_ids + [suf] + suffix_ids + [mid]

    def _limit(self, request, n_prompt: int) -> int:
        """Tokens to generate: never past this sequence's n_ctx."""
        room = self.n_ctx - n_prompt
        max_tokens = request.max_tokens
        if max_tokens is None:  # OpenAI's defaults: 16 for completions, the context for chat
            max_tokens = room if request.messages is not None else self.completion_max_tokens
        return max(0, min(max_tokens, room))

    def _logit_bias(self, logit_bias: dict[int, float] | None) -> dict[int, float] | None:
        if not logit_bias:
            return None
        self.check_ids(logit_bias, "logit_bias")
        return logit_bias


def _text_deltas(run):
    yield from run
    yield run.final()
