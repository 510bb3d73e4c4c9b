"""The llama.cpp backend proper: runs in the worker process only (imports llama_cpp lazily)."""

from __future__ import annotations

import ctypes
import json
import logging
import random
import threading
from pathlib import Path

from llama_api import errors
from llama_api.types import (
    Delta,
    EmbedResult,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
    Usage,
)

from llama_api_llamacpp import chat
from llama_api_llamacpp.gguf_meta import (
    EMBEDDING_ARCHS,
    POOLING,
    GGUFError,
    kv_cache_bytes_per_token,
    read_kv,
    summarize,
)
from llama_api_llamacpp.textstream import TextStream

log = logging.getLogger("llama_api_llamacpp")

DEFAULT_MAX_CTX = 4096
# Continuous batching by default: up to this many sequences, as long as their KV caches
# (each n_ctx tokens) fit in `kv_cache_mb`.
MAX_AUTO_PARALLEL = 4
DEFAULT_KV_CACHE_MB = 1024
# Prompts at least this long can be cancelled while llama.cpp reads them.
ABORTABLE_PROMPT = 64
# Sampling defaults (llama.cpp's own), overridable per model with options["sampling"].
SAMPLING_DEFAULTS = {
    "temperature": 0.8,
    "top_p": 0.95,
    "top_k": 40,
    "min_p": 0.05,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}
# Options passed to llama_cpp.Llama unchanged.
PASSTHROUGH = {
    "n_batch", "n_ubatch", "flash_attn", "rope_freq_base", "rope_freq_scale",
    "rope_scaling_type", "seed", "use_mmap", "use_mlock", "type_k", "type_v", "offload_kqv",
    "main_gpu", "split_mode", "tensor_split", "kv_overrides", "lora_path", "lora_base",
    "lora_scale", "last_n_tokens_size", "numa", "yarn_ext_factor", "yarn_attn_factor",
    "yarn_beta_fast", "yarn_beta_slow", "yarn_orig_ctx", "swa_full", "op_offload",
    "attention_type",
}
# Options this backend handles itself.
OWN = {"n_ctx", "n_threads", "n_threads_batch", "n_gpu_layers", "embedding", "pooling",
       "normalize", "chat_template", "chat_format", "verbose", "sampling", "max_tokens",
       "n_parallel", "kv_cache_mb", "kv_unified"}
# Extra sampling fields a client may send (request.extra).
EXTRA_SAMPLING = {"typical_p", "mirostat_mode", "mirostat_tau", "mirostat_eta",
                  "xtc_probability", "xtc_threshold"}


def _import_llama_cpp():
    try:
        import llama_cpp
    except ImportError as exc:
        raise errors.ModelLoadError(
            "the llamacpp backend needs llama-cpp-python: pip install llama-cpp-python "
            f"({exc})"
        ) from exc
    return llama_cpp


def load(spec, context) -> "LlamaCppModel":
    llama_cpp = _import_llama_cpp()
    path = Path(spec.path)
    if not path.is_file():
        raise errors.ModelLoadError(f"model file not found: {path}")
    try:
        kv = read_kv(path)
    except (GGUFError, OSError) as exc:
        raise errors.ModelLoadError(f"{path} is not a valid GGUF file: {exc}") from exc
    meta = summarize(kv)
    opts = dict(spec.options or {})
    unknown = set(opts) - PASSTHROUGH - OWN
    if unknown:
        log.warning("%s: ignoring unknown options %s", spec.id, sorted(unknown))

    trained = meta.get("context_length") or 2048
    n_ctx = int(opts.get("n_ctx") or min(trained, DEFAULT_MAX_CTX))
    n_threads = int(opts.get("n_threads") or context.n_threads or 1)
    embedding = bool(opts.get("embedding", meta.get("embedding", False)))
    # Sequences decoded together (continuous batching): `n_parallel`, else the config's
    # `slots`, else as many (up to 4) as the KV cache budget holds.
    explicit = opts.get("n_parallel") or spec.slots
    kv_per_token = kv_cache_bytes_per_token(kv, opts.get("type_k"), opts.get("type_v"))
    budget_mb = float(opts.get("kv_cache_mb") or DEFAULT_KV_CACHE_MB)
    if explicit:
        n_parallel = max(1, int(explicit))
    elif embedding:
        n_parallel = 1
    else:
        n_parallel = auto_parallel(kv_per_token, n_ctx, budget_mb)
    if embedding and n_parallel > 1:
        log.warning("%s: embedding models run one request at a time (n_parallel=1)", spec.id)
        n_parallel = 1
    params = {k: opts[k] for k in PASSTHROUGH if k in opts}
    params.update(
        model_path=str(path),
        n_ctx=n_ctx,
        n_threads=n_threads,
        n_threads_batch=int(opts.get("n_threads_batch") or n_threads),
        n_gpu_layers=int(opts.get("n_gpu_layers", -1)),
        embedding=embedding,
        verbose=bool(opts.get("verbose", False)),
    )
    if embedding:
        pooling = opts.get("pooling")
        if pooling is None and "pooling" not in meta:
            pooling = "mean"  # a generative model has no pooling of its own
        if pooling is not None:
            names = {v: k for k, v in POOLING.items()}
            if isinstance(pooling, str) and pooling not in names:
                raise errors.ModelLoadError(
                    f"{spec.id}: unknown pooling {pooling!r} (one of {sorted(names)})")
            params["pooling_type"] = names[pooling] if isinstance(pooling, str) else int(pooling)
        # Non-causal models read a whole input in one micro-batch.
        params.setdefault("n_batch", n_ctx)
        params.setdefault("n_ubatch", params["n_batch"])
    if n_parallel > 1:  # the batch engine makes its own context; keep this one small
        params["n_ctx"] = 256
    kv_mb = (kv_per_token * n_ctx * n_parallel / 2**20) if kv_per_token is not None else None
    context.report(f"loading {path.name} (n_ctx={n_ctx}, threads={n_threads}, "
                   f"parallel={n_parallel}"
                   + (f", KV cache {kv_mb:.0f} MB" if kv_mb is not None else "") + ")", 0.0)
    try:
        llm = llama_cpp.Llama(**params)
    except Exception as exc:  # llama.cpp says only "Failed to load model from file"
        raise errors.ModelLoadError(
            f"llama.cpp could not load {path}: {exc} (corrupt or unsupported GGUF: "
            f"architecture {meta.get('architecture') or 'unknown'!r})"
        ) from exc
    try:
        model = LlamaCppModel(llm, llama_cpp, spec, meta, opts, embedding, n_ctx, n_parallel)
    except Exception:
        llm.close()
        raise
    model.info["kv_cache_mb"] = round(kv_mb, 1) if kv_mb is not None else None
    context.report(f"loaded {path.name}", 1.0)
    return model


def auto_parallel(kv_per_token: int | None, n_ctx: int, budget_mb: float) -> int:
    """The most sequences (1..MAX_AUTO_PARALLEL) whose KV caches of n_ctx tokens each fit
    in budget_mb; 1 when the model's KV size is unknown."""
    if kv_per_token is None:
        return 1
    per_seq = kv_per_token * n_ctx
    if per_seq <= 0:
        return MAX_AUTO_PARALLEL
    fits = int(budget_mb * 2**20 // per_seq)
    return max(1, min(MAX_AUTO_PARALLEL, fits))


class LlamaCppModel:
    """One loaded GGUF model. llama.cpp contexts are not thread-safe: one request at a time."""

    slots = 1
    engine = None

    def __init__(self, llm, llama_cpp, spec, meta, opts, embedding, n_ctx=None, n_parallel=1):
        self.llm = llm
        self.lib = llama_cpp
        self.spec = spec
        self.lock = threading.Lock()
        self._piece_lock = threading.Lock()
        self.embedding = embedding
        # Encoder architectures (BERT...) have no language-model head: embeddings only.
        self.embedding_only = meta.get("architecture") in EMBEDDING_ARCHS
        self.normalize = bool(opts.get("normalize", True))
        self.n_ctx = int(n_ctx or llm.n_ctx()) if n_parallel > 1 else llm.n_ctx()
        self.n_vocab = llm.n_vocab()
        self.vocab = llm._model.vocab
        self.ctx = llm._ctx.ctx
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.sampling = {**SAMPLING_DEFAULTS, **(opts.get("sampling") or {})}
        self.default_seed = opts.get("seed")
        self.completion_max_tokens = int(opts.get("max_tokens", 16))
        self._pieces: dict[int, bytes] = {}
        # Cancel during a long prompt: llama.cpp polls this between graph nodes. It is set only
        # while a prompt is decoded (a Python call per node would slow every token down).
        self._abort_event: threading.Event | None = None
        self._abort_cb = llama_cpp.ggml_abort_callback(
            lambda _data: self._abort_event is not None and self._abort_event.is_set())
        self._piece_buf = ctypes.create_string_buffer(256)
        self.bos_text = self._token_text(llama_cpp.llama_vocab_bos(self.vocab))
        self.eos_text = self._token_text(llama_cpp.llama_vocab_eos(self.vocab))

        # The chat prompt: an explicit template, a named llama-cpp-python format, or the GGUF's.
        self.template = None
        self.template_source = None
        self.chat_formatter = None
        if opts.get("chat_template"):
            source = str(opts["chat_template"])
            if "{" not in source and Path(source).expanduser().is_file():  # a template file
                source = Path(source).expanduser().read_text(encoding="utf-8")
            self.template_source = source
        elif opts.get("chat_format"):
            self.chat_formatter = self._named_format(opts["chat_format"])
        else:
            self.template_source = llm.metadata.get("tokenizer.chat_template")
        if self.template_source:
            self.template = chat.compile_template(self.template_source)
        self.template_knows_tools = bool(self.template_source and "tools" in self.template_source)
        self.info = {
            "backend": "llamacpp",
            "architecture": meta.get("architecture"),
            "n_ctx": self.n_ctx,
            "n_ctx_train": llm._model.n_ctx_train(),
            "n_threads": llm.context_params.n_threads,
            "embedding": embedding,
            "chat_template": bool(self.template or self.chat_formatter),
            "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
            "n_parallel": n_parallel,
        }
        if n_parallel > 1:
            from llama_api_llamacpp.batching import BatchEngine

            self.engine = BatchEngine(self, n_parallel, self.n_ctx,
                                      n_batch=int(opts.get("n_batch") or 512),
                                      unified=bool(opts.get("kv_unified", True)))
            self.slots = n_parallel
            self.info["kv_unified"] = self.engine.unified

    # -- helpers ---------------------------------------------------------------------------

    def _named_format(self, name: str):
        from llama_cpp import llama_chat_format

        for attr in (f"format_{name.replace('-', '_')}", f"format_{name.replace('-', '')}"):
            formatter = getattr(llama_chat_format, attr, None)
            if formatter is not None:
                return formatter
        raise errors.ModelLoadError(f"{self.spec.id}: unknown chat_format {name!r}")

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        raw = self.lib.llama_vocab_get_text(self.vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""

    def piece(self, token: int) -> bytes:
        """A token's bytes (special tokens render as nothing)."""
        cached = self._pieces.get(token)
        if cached is None:
            with self._piece_lock:
                n = self.lib.llama_token_to_piece(self.vocab, token, self._piece_buf, 256, 0,
                                                  False)
                cached = self._piece_buf.raw[:n] if n > 0 else b""
            self._pieces[token] = cached
        return cached

    def abort_on(self, event) -> None:
        """Let llama.cpp abort the current decode when `event` is set (None: never)."""
        self._abort_event = event
        callback = self._abort_cb if event is not None else self.lib.ggml_abort_callback()
        self.lib.llama_set_abort_callback(self.ctx, callback, None)

    def tokenize(self, text: str, add_bos: bool, special: bool) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        with self.lock:
            try:
                self.llm.close()
            except Exception:
                log.exception("closing the model failed")

    # -- prompts ---------------------------------------------------------------------------

    def chat_prompt(self, request, tools: list[dict] | None, forced: str | None):
        """The chat prompt text and extra stop strings."""
        if self.template is None and self.chat_formatter is None:
            raise errors.BadRequest(
                f"model {self.spec.id} has no chat template in its GGUF file, so it can't serve "
                "chat completions; use /v1/completions, or set the model option "
                "`chat_template` (Jinja) or `chat_format` (e.g. chatml)",
                param="messages",
            )
        knows_tools = self.template_knows_tools
        messages = chat.normalize_messages(request.messages or [], knows_tools)
        if tools and not knows_tools:
            system = chat.tool_system_prompt(tools, forced)
            if messages and messages[0].get("role") == "system":
                messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + system}
            else:
                messages.insert(0, {"role": "system", "content": system})
        if self.chat_formatter is not None:
            result = self.chat_formatter(messages=messages)
            stop = result.stop or []
            return result.prompt, [stop] if isinstance(stop, str) else list(stop)
        variables = {
            "messages": messages,
            "add_generation_prompt": True,
            "bos_token": self.bos_text,
            "eos_token": self.eos_text,
        }
        if tools and knows_tools:
            variables["tools"] = tools
        try:
            return self.template.render(**variables), []
        except errors.LlamaApiError:
            raise
        except Exception as exc:
            raise errors.BadRequest(f"the chat template failed on these messages: {exc}",
                                    param="messages") from exc

    def prompt_tokens(self, text: str) -> list[int]:
        add_bos = self.add_bos and not (self.bos_text and text.startswith(self.bos_text))
        return self.tokenize(text, add_bos=add_bos, special=True)

    def grammar(self, gbnf: str, what: str):
        """A LlamaGrammar, checked by llama.cpp's parser first (a bad one would crash)."""
        from llama_cpp.llama_grammar import LlamaGrammar

        sampler = self.lib.llama_sampler_init_grammar(self.vocab, gbnf.encode("utf-8"), b"root")
        if not sampler:
            raise errors.BadRequest(f"llama.cpp could not parse the grammar for {what}")
        self.lib.llama_sampler_free(sampler)
        return LlamaGrammar.from_string(gbnf, verbose=False)

    def schema_grammar(self, schema, what: str):
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        try:
            gbnf = json_schema_to_gbnf(json.dumps(bounded_integers(schema)))
        except Exception as exc:
            raise errors.BadRequest(f"unsupported JSON schema for {what}: {exc}",
                                    param=what) from exc
        return self.grammar(gbnf, what)

    # -- generation ------------------------------------------------------------------------

    def generate(self, request, cancelled):
        if self.embedding_only:
            raise errors.NotSupported(
                f"model {self.spec.id} is an embedding model ({self.info['architecture']}); "
                "use /v1/embeddings")
        extra = dict(request.extra or {})
        grammar = None
        tool_mode = None
        forced = None
        tools = None
        stop = list(request.stop or [])

        if request.messages is not None:
            tools = request.tools or None
            choice = request.tool_choice
            if tools:
                if choice is None or choice == "auto":
                    tool_mode = "auto"
                elif choice == "none":
                    tools = None
                elif choice == "required":
                    tool_mode = "required"
                elif isinstance(choice, dict):
                    forced = (choice.get("function") or {}).get("name") or choice.get("name")
                    matches = [t for t in tools if t.get("function", {}).get("name") == forced]
                    if not matches:
                        raise errors.BadRequest(f"tool_choice names {forced!r}, which is not in "
                                                "tools", param="tool_choice")
                    tool_mode = "forced"
                    grammar = self.schema_grammar(
                        matches[0]["function"].get("parameters") or {"type": "object"},
                        "tools")
                else:
                    raise errors.BadRequest(f"unsupported tool_choice {choice!r}",
                                            param="tool_choice")
                if tool_mode == "required":
                    options = [{
                        "type": "object",
                        "properties": {
                            "name": {"const": t["function"]["name"]},
                            "arguments": t["function"].get("parameters") or {"type": "object"},
                        },
                        "required": ["name", "arguments"],
                    } for t in tools]
                    schema = options[0] if len(options) == 1 else {"anyOf": options}
                    grammar = self.schema_grammar(schema, "tools")
            text, template_stops = self.chat_prompt(request, tools, forced)
            stop += template_stops
            tokens = self.prompt_tokens(text)
        elif isinstance(request.prompt, list):
            tokens = [int(t) for t in request.prompt]
            bad = [t for t in tokens if not 0 <= t < self.n_vocab]
            if bad:
                raise errors.BadRequest(f"token ids out of range: {bad[:5]}", param="prompt")
            text = None
        else:
            text = request.prompt or ""
            tokens = self.prompt_tokens(text)
        if not tokens:
            tokens = [self.lib.llama_vocab_bos(self.vocab)]

        if grammar is None:
            fmt = request.response_format or {}
            kind = fmt.get("type")
            if kind == "json_object":
                schema = fmt.get("schema")
                if schema:
                    grammar = self.schema_grammar(schema, "response_format")
                else:
                    from llama_cpp.llama_grammar import JSON_GBNF
                    grammar = self.grammar(JSON_GBNF, "response_format")
            elif kind == "json_schema":
                spec = fmt.get("json_schema") or {}
                schema = spec.get("schema", spec if "type" in spec else None)
                if not isinstance(schema, dict):
                    raise errors.BadRequest("response_format json_schema needs a schema",
                                            param="response_format")
                grammar = self.schema_grammar(schema, "response_format")
            elif kind not in (None, "text"):
                raise errors.BadRequest(f"unsupported response_format type {kind!r}",
                                        param="response_format")
            elif extra.get("grammar"):
                grammar = self.grammar(str(extra["grammar"]), "grammar")

        n_prompt = len(tokens)
        if n_prompt >= self.n_ctx:
            raise errors.ContextLengthExceeded(
                f"this model's context is {self.n_ctx} tokens, but the prompt has {n_prompt} "
                "tokens; shorten the prompt or load the model with a larger n_ctx",
                param="messages" if request.messages is not None else "prompt",
            )
        room = self.n_ctx - n_prompt
        max_tokens = request.max_tokens
        if max_tokens is None:  # OpenAI's defaults: 16 for completions, the context for chat
            max_tokens = room if request.messages is not None else self.completion_max_tokens
        limit = max(0, min(max_tokens, room))

        sampling = dict(self.sampling)
        for key in SAMPLING_DEFAULTS:
            value = getattr(request, key)
            if value is not None:
                sampling[key] = value
        for key in EXTRA_SAMPLING:
            if key in extra and extra[key] is not None:
                sampling[key] = extra[key]
        seed = request.seed if request.seed is not None else self.default_seed
        if seed is None:
            seed = random.getrandbits(32)
        logit_bias = self._logit_bias(request.logit_bias) if request.logit_bias else None

        seed &= 0xFFFFFFFF
        if seed == 0xFFFFFFFF:  # llama.cpp reads this one as "pick a random seed"
            seed -= 1
        echo = text if (request.echo and request.messages is None) else None
        if echo is None and request.echo and request.messages is None:
            echo = self.llm.detokenize(tokens).decode("utf-8", errors="replace")
        run = Run(self, tokens, sampling, seed, grammar, logit_bias,
                  stop if tool_mode in (None, "auto") else [], limit, request.logprobs,
                  cancelled, echo=echo)
        if tool_mode is None:
            return self._text_deltas(run)
        names = {t["function"]["name"] for t in tools}
        return self._tool_deltas(run, tool_mode, forced, names)

    def _logit_bias(self, logit_bias: dict) -> dict[int, float]:
        bias = {}
        for key, value in logit_bias.items():
            try:
                token = int(key)
            except (TypeError, ValueError):
                raise errors.BadRequest(f"logit_bias keys are token ids, got {key!r}",
                                        param="logit_bias") from None
            if not 0 <= token < self.n_vocab:
                raise errors.BadRequest(f"logit_bias token {token} is out of range",
                                        param="logit_bias")
            bias[token] = float(value)
        return bias

    def _text_deltas(self, run):
        for text, logprobs in run:
            yield Delta(text=text, logprobs=logprobs)
        yield run.final()

    def _tool_deltas(self, run, mode, forced, names):
        if mode == "forced":
            yield Delta(tool_calls=[ToolCallDelta(index=0, id=chat.call_id(), name=forced)])
            for text, _ in run:
                if text:
                    yield Delta(tool_calls=[ToolCallDelta(index=0, arguments=text)])
            yield run.final("tool_calls" if run.finish == "stop" else run.finish)
            return
        if mode == "required":
            for _ in run:
                pass
            calls = chat.parse_tool_calls(run.text, names)
            if calls is None:  # only when cut short (max_tokens)
                yield Delta(text=run.text)
                yield run.final()
                return
            yield from self._calls(calls)
            yield run.final("tool_calls")
            return
        # auto: stream text, but hold back what may be a tool call: an answer starting with
        # "{" or "[" (bare JSON calls), or a "<tool_call>" marker anywhere.
        buf = ""
        call_text = None
        decided = False
        for text, _ in run:
            if call_text is not None:
                call_text += text
                continue
            buf += text
            if not decided:
                probe = buf.lstrip()
                if not probe:
                    continue
                if probe[0] in "{[":
                    call_text, buf = buf, ""
                    continue
                if len(probe) < len(chat.TOOL_OPEN) and chat.TOOL_OPEN.startswith(probe):
                    continue
                decided = True
            i = buf.find(chat.TOOL_OPEN)
            if i != -1:
                if buf[:i].strip():
                    yield Delta(text=buf[:i])
                call_text, buf = buf[i:], ""
                continue
            keep = next((n for n in range(min(len(buf), len(chat.TOOL_OPEN) - 1), 0, -1)
                         if buf.endswith(chat.TOOL_OPEN[:n])), 0)
            send, buf = buf[:len(buf) - keep], buf[len(buf) - keep:]
            if send:
                yield Delta(text=send)
        if call_text is not None:
            calls = chat.parse_tool_calls(call_text, names)
            if calls:
                yield from self._calls(calls)
                yield run.final("tool_calls")
                return
            buf += call_text
        if buf:
            yield Delta(text=buf)
        yield run.final()

    @staticmethod
    def _calls(calls):
        for i, call in enumerate(calls):
            yield Delta(tool_calls=[ToolCallDelta(
                index=i, id=chat.call_id(), name=call["name"], arguments=call["arguments"])])

    # -- embeddings ------------------------------------------------------------------------

    def embed(self, request):
        if not self.embedding:
            raise errors.NotSupported(
                f"model {self.spec.id} was not loaded for embeddings; set the model option "
                "`embedding: true` (or use an embedding GGUF)")
        inputs = request.input
        token_lists = []
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                tokens = self.tokenize(item, add_bos=self.add_bos, special=False)
            else:
                tokens = [int(t) for t in item]
                if any(not 0 <= t < self.n_vocab for t in tokens):
                    raise errors.BadRequest(f"input {i} has token ids out of range",
                                            param="input")
            if not tokens:
                raise errors.BadRequest(f"input {i} is empty", param="input")
            token_lists.append(tokens)
        limit = min(self.n_ctx, self.llm.n_batch)
        for i, tokens in enumerate(token_lists):
            if len(tokens) > limit:
                raise errors.ContextLengthExceeded(
                    f"input {i} has {len(tokens)} tokens, but this model reads at most {limit} "
                    "tokens per input", param="input")
        count = sum(len(tokens) for tokens in token_lists)
        with self.lock:
            vectors = self._embed_tokens(token_lists)
        import numpy as np

        matrix = np.asarray(vectors, dtype=np.float32)
        if request.dimensions:
            matrix = matrix[:, : request.dimensions]
        if self.normalize:
            norms = np.linalg.norm(matrix, axis=1, keepdims=True)
            matrix = matrix / np.maximum(norms, 1e-12)
        return EmbedResult(embeddings=matrix, prompt_tokens=count)

    def _embed_tokens(self, token_lists):
        """Pooled vectors, several sequences per llama.cpp batch (mean-pools models without
        pooling). Like Llama.embed, but on token ids."""
        import numpy as np

        llm, lib = self.llm, self.lib
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
                    ptr = lib.llama_get_embeddings_seq(self.ctx, i)
                    out.append(np.ctypeslib.as_array(ptr, shape=(n_embd,)).copy())
            else:
                ptr = lib.llama_get_embeddings(self.ctx)
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


def bounded_integers(schema):
    """llama-cpp-python's schema converter ignores integer bounds: spell small ranges out."""
    if isinstance(schema, list):
        return [bounded_integers(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: bounded_integers(value) for key, value in schema.items()}
    if out.get("type") == "integer" and "enum" not in out:
        low = out.get("minimum")
        high = out.get("maximum")
        if isinstance(out.get("exclusiveMinimum"), (int, float)):
            low = out["exclusiveMinimum"] + 1
        if isinstance(out.get("exclusiveMaximum"), (int, float)):
            high = out["exclusiveMaximum"] - 1
        if isinstance(low, (int, float)) and isinstance(high, (int, float)) \
                and 0 <= high - low <= 1000:
            import math

            out["enum"] = list(range(math.ceil(low), math.floor(high) + 1))
    return out


class Run:
    """One generation: iterate for (text, logprobs) pieces; then `final()` gives the last delta."""

    def __init__(self, model, tokens, sampling, seed, grammar, logit_bias, stop, limit,
                 logprobs, cancelled, echo=None):
        self.model = model
        self.tokens = tokens
        self.sampling = sampling
        self.seed = seed
        self.grammar = grammar
        self.logit_bias = logit_bias
        self.stream = TextStream(stop)
        self.limit = limit
        self.logprobs = logprobs
        self.cancelled = cancelled
        self.finish = "length"
        self.completion_tokens = 0
        # `echo`: the prompt text comes first, with the prompt tokens' logprobs when
        # logprobs are asked for (OpenAI's legacy completions: the first one has none).
        self.echo = echo
        self.prompt_logprobs = echo is not None and logprobs is not None

    @property
    def text(self) -> str:
        return self.stream.text

    def final(self, finish: str | None = None) -> Delta:
        return Delta(finish_reason=finish or self.finish, usage=Usage(
            prompt_tokens=len(self.tokens), completion_tokens=self.completion_tokens))

    def __iter__(self):
        model = self.model
        llm = model.llm
        stream = self.stream
        want_logprobs = self.logprobs is not None
        if model.engine is not None:
            yield from self._batched()
            return
        with model.lock:
            if self.prompt_logprobs:
                yield self.echo, self._plain_prompt_logprobs()
            elif self.echo:
                yield self.echo, None
            if self.limit <= 0:
                return
            # Our own sampler chain (native logit bias, penalties only when asked for).
            # (generate() calls it on its first step, so it stays set until the end.)
            llm._init_sampler = self._make_sampler
            gen = llm.generate(self.tokens, reset=True)
            abortable = self.cancelled is not None and len(self.tokens) >= ABORTABLE_PROMPT
            if abortable:
                model.abort_on(self.cancelled)
            try:
                for token in gen:
                    if abortable:
                        model.abort_on(None)
                        abortable = False
                    if self._is_end(token):
                        break
                    lps = self._logprobs(token, model.ctx, -1) if want_logprobs else None
                    text, done = self._accept(token)
                    if text or lps:
                        yield text, lps
                    if done:
                        break
            except RuntimeError:
                if not (self.cancelled is not None and self.cancelled.is_set()):
                    raise
                self.finish = "stop"  # llama.cpp aborted the prompt: the client is gone
                return
            finally:
                if abortable:
                    model.abort_on(None)
                gen.close()
                llm.__dict__.pop("_init_sampler", None)
        rest = stream.finish()
        if rest:
            yield rest, None

    def _is_end(self, token) -> bool:
        """An end-of-generation token ends the choice with `stop` (it is not counted)."""
        if self.model.lib.llama_vocab_is_eog(self.model.vocab, token):
            self.finish = "stop"
            return True
        return False

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

    def _batched(self):
        """The same loop, on tokens that the batch engine samples."""
        from llama_api_llamacpp.batching import Sequence

        from llama_api_llamacpp.batching import PROMPT

        model = self.model
        stream = self.stream
        if self.echo and not self.prompt_logprobs:
            yield self.echo, None
        if self.limit <= 0 and not self.prompt_logprobs:
            return
        logprobs_fn = self._logprobs if self.logprobs is not None else None
        seq = Sequence(list(self.tokens), self._make_sampler(), self.limit, logprobs_fn,
                       self.cancelled, prompt_logprobs=self.prompt_logprobs)
        model.engine.submit(seq)
        try:
            for token, lps in model.engine.tokens(seq):
                if token is PROMPT:  # the prompt's logprobs, before any token
                    yield self.echo, [self._first_prompt_logprob()] + lps
                    continue
                if self._is_end(token):
                    break
                text, done = self._accept(token)
                if text or lps:
                    yield text, lps
                if done:
                    break
        finally:
            seq.stop()
        rest = stream.finish()
        if rest:
            yield rest, None

    def _make_sampler(self, **_ignored):
        """The llama.cpp sampler chain for this request (replaces Llama._init_sampler)."""
        from llama_cpp import _internals as internals

        model = self.model
        llm = model.llm
        s = self.sampling
        seed = self.seed
        sampler = internals.LlamaSampler()
        if self.logit_bias:
            sampler.add_logit_bias(model.n_vocab, self.logit_bias)
        repeat = float(s["repeat_penalty"])
        freq = float(s["frequency_penalty"])
        present = float(s["presence_penalty"])
        if repeat != 1.0 or freq != 0.0 or present != 0.0:
            sampler.add_penalties(n_vocab=model.n_vocab, penalty_last_n=llm.last_n_tokens_size,
                                  penalty_repeat=repeat, penalty_freq=freq,
                                  penalty_present=present)
        if self.grammar is not None:
            sampler.add_grammar(llm._model, self.grammar)
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

    def _first_prompt_logprob(self) -> TokenLogprob:
        piece = self.model.piece(self.tokens[0])
        return TokenLogprob(token=piece.decode("utf-8", errors="replace"), logprob=None,
                            bytes=list(piece))

    def _plain_prompt_logprobs(self) -> list[TokenLogprob]:
        """Decode the prompt with logits at every position (holding model.lock), and leave
        it in the KV cache so that generation decodes only its last token again."""
        model = self.model
        llm = model.llm
        tokens = self.tokens
        n = len(tokens)
        out = [self._first_prompt_logprob()]
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
                        out += self._logprobs(tokens[start + j + 1], model.ctx, j)
        except Exception:
            llm._ctx.kv_cache_clear()
            raise
        llm.input_ids[:n] = tokens
        llm.n_tokens = n
        llm._requires_eval = True  # the logits at hand are not the last token's alone
        return out

    def _logprobs(self, token: int, ctx, index: int) -> list[TokenLogprob]:
        import numpy as np

        model = self.model
        piece = model.piece(token)
        ptr = model.lib.llama_get_logits_ith(ctx, index)
        logits = np.ctypeslib.as_array(ptr, shape=(model.n_vocab,)).astype(np.float64)
        top = logits.max()
        logsum = top + np.log(np.exp(logits - top).sum())
        chosen = float(logits[token] - logsum)
        alternatives = []
        k = int(self.logprobs or 0)
        if k > 0:
            k = min(k, model.n_vocab)
            ids = np.argpartition(-logits, k - 1)[:k]
            ids = ids[np.argsort(-logits[ids])]
            alternatives = [
                TopLogprob(model.piece(int(i)).decode("utf-8", errors="replace"),
                           float(logits[i] - logsum))
                for i in ids
            ]
        return [TokenLogprob(token=piece.decode("utf-8", errors="replace"), logprob=chosen,
                             top=alternatives, bytes=list(piece))]
