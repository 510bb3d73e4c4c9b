"""Load options (`ModelSpec.options`): read once, before llama.cpp loads anything."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_api import errors
from llama_api.text.reasoning import ReasoningTags
from llama_api_llamacpp.gguf_meta import POOLING, kv_cache_bytes_per_token
from llama_api_llamacpp.thinking import reasoning_tags
from llama_api_llamacpp.threads import machine_cores

log = logging.getLogger("llama_api_llamacpp")

DEFAULT_MAX_CTX = 4096
# Continuous batching by default: up to this many sequences, as long as their KV caches
# (each n_ctx tokens) fit in `kv_cache_mb`.
MAX_AUTO_PARALLEL = 4
DEFAULT_KV_CACHE_MB = 1024
DEFAULT_N_BATCH = 512
# Prompt tokens decoded per step beside running streams (continuous batching): a new
# request's long prompt delays their next token by about one such chunk.
DEFAULT_PREFILL_CHUNK = 128
DEFAULT_DRAFT_TOKENS = 8  # most drafted tokens per step (speculative = "ngram")
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
    "n_batch", "n_ubatch", "rope_freq_base", "rope_freq_scale",
    "rope_scaling_type", "seed", "use_mmap", "use_mlock", "type_k", "type_v", "offload_kqv",
    "main_gpu", "split_mode", "tensor_split", "kv_overrides", "lora_path", "lora_base",
    "lora_scale", "last_n_tokens_size", "numa", "yarn_ext_factor", "yarn_attn_factor",
    "yarn_beta_fast", "yarn_beta_slow", "yarn_orig_ctx", "swa_full", "op_offload",
    "attention_type",
}
# Options this backend reads itself.
OWN = {"n_ctx", "n_threads", "n_threads_batch", "n_gpu_layers", "embedding", "pooling",
       "normalize", "chat_template", "chat_format", "verbose", "sampling", "max_tokens",
       "n_parallel", "kv_cache_mb", "kv_unified", "reasoning_tags", "threads",
       "prefill_chunk", "speculative", "draft_tokens", "flash_attn", "mmproj"}
# The context the plain `Llama` object keeps when the batch engine makes its own.
ENGINE_SIDE_CTX = 256


@dataclass
class LoadOptions:
    n_ctx: int  # tokens per sequence (prompt + completion)
    n_threads: int  # the count decoding starts with
    n_parallel: int  # sequences decoded together; 1: the plain path
    embedding: bool
    llama_params: dict[str, Any]  # keyword arguments of llama_cpp.Llama
    kv_cache_mb: float | None  # estimated from the GGUF header; None when unknown
    sampling: dict[str, Any] = field(default_factory=lambda: dict(SAMPLING_DEFAULTS))
    default_seed: int | None = None
    completion_max_tokens: int = 16
    normalize: bool = True
    chat_template: str | None = None  # the Jinja source (an option, else the GGUF's)
    chat_format: str | None = None  # a llama-cpp-python format name instead
    n_batch: int = DEFAULT_N_BATCH
    kv_unified: bool = True
    reasoning_tags: ReasoningTags | None = None  # the tags the model thinks in
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK
    speculative: str | None = None  # "ngram": prompt lookup drafts (speculative.py)
    draft_tokens: int = DEFAULT_DRAFT_TOKENS
    threads_auto: bool = False  # change the count at run time (threads.py), up to max_threads
    max_threads: int = 1
    n_threads_batch: int | None = None  # set: prompt chunks keep this count
    flash_attn: str = "auto"  # "auto" (llama.cpp decides per device), "on" or "off"
    mmproj: str | None = None  # a vision model's projector GGUF (vision.py)

    @property
    def uses_engine(self) -> bool:
        """The batch engine decodes (several sequences, or images: the plain path has
        no way to feed image embeddings)."""
        return self.n_parallel > 1 or self.mmproj is not None


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


def _chat_template(opts: dict, kv: dict) -> str | None:
    if opts.get("chat_template"):
        source = str(opts["chat_template"])
        if "{" not in source and Path(source).expanduser().is_file():  # a template file
            source = Path(source).expanduser().read_text(encoding="utf-8")
        return source
    if opts.get("chat_format"):
        return None
    template = kv.get("tokenizer.chat_template")
    return template if isinstance(template, str) and template else None


def parse_options(spec, kv: dict, meta: dict, n_threads: int | None) -> LoadOptions:
    """What to load and how, from the model's options, its GGUF header and the core's
    thread budget."""
    opts = dict(spec.options or {})
    unknown = set(opts) - PASSTHROUGH - OWN
    if unknown:
        log.warning("%s: ignoring unknown options %s", spec.id, sorted(unknown))

    trained = meta.get("context_length") or 2048
    n_ctx = int(opts.get("n_ctx") or min(trained, DEFAULT_MAX_CTX))
    threads, threads_auto = _threads(spec.id, opts, n_threads)
    embedding = bool(opts.get("embedding", meta.get("embedding", False)))
    # Sequences decoded together (continuous batching): `n_parallel`, else the config's
    # `slots`, else as many (up to 4) as the KV cache budget holds.
    explicit = opts.get("n_parallel") or spec.slots
    kv_per_token = kv_cache_bytes_per_token(kv, opts.get("type_k"), opts.get("type_v"))
    if explicit:
        n_parallel = max(1, int(explicit))
    elif embedding:
        n_parallel = 1
    else:
        budget_mb = float(opts.get("kv_cache_mb") or DEFAULT_KV_CACHE_MB)
        n_parallel = auto_parallel(kv_per_token, n_ctx, budget_mb)
    if embedding and n_parallel > 1:
        log.warning("%s: embedding models run one request at a time (n_parallel=1)", spec.id)
        n_parallel = 1

    params = {k: opts[k] for k in PASSTHROUGH if k in opts}
    params.update(
        model_path=str(spec.path),
        n_ctx=n_ctx,
        n_threads=threads,
        n_threads_batch=int(opts.get("n_threads_batch") or threads),
        n_gpu_layers=int(opts.get("n_gpu_layers", -1)),
        embedding=embedding,
        verbose=bool(opts.get("verbose", False)),
    )
    if embedding:
        params.update(_pooling(spec.id, opts.get("pooling"), meta))
        # Non-causal models read a whole input in one micro-batch.
        params.setdefault("n_batch", n_ctx)
        params.setdefault("n_ubatch", params["n_batch"])
    mmproj = str(Path(opts["mmproj"]).expanduser()) if opts.get("mmproj") else None
    if n_parallel > 1 or mmproj:  # the batch engine makes its own context; keep this small
        params["n_ctx"] = ENGINE_SIDE_CTX

    chat_template = _chat_template(opts, kv)
    kv_mb = kv_per_token * n_ctx * n_parallel / 2**20 if kv_per_token is not None else None
    return LoadOptions(
        n_ctx=n_ctx,
        n_threads=threads,
        n_parallel=n_parallel,
        embedding=embedding,
        llama_params=params,
        kv_cache_mb=kv_mb,
        sampling={**SAMPLING_DEFAULTS, **(opts.get("sampling") or {})},
        default_seed=opts.get("seed"),
        completion_max_tokens=int(opts.get("max_tokens", 16)),
        normalize=bool(opts.get("normalize", True)),
        chat_template=chat_template,
        chat_format=str(opts["chat_format"]) if opts.get("chat_format") else None,
        n_batch=int(opts.get("n_batch") or DEFAULT_N_BATCH),
        kv_unified=bool(opts.get("kv_unified", True)),
        reasoning_tags=reasoning_tags(spec.id, opts.get("reasoning_tags"), chat_template),
        prefill_chunk=max(1, int(opts.get("prefill_chunk") or DEFAULT_PREFILL_CHUNK)),
        speculative=_speculative(spec.id, opts.get("speculative"), n_parallel),
        draft_tokens=max(1, int(opts.get("draft_tokens") or DEFAULT_DRAFT_TOKENS)),
        threads_auto=threads_auto,
        max_threads=machine_cores() if threads_auto else threads,
        n_threads_batch=int(opts["n_threads_batch"]) if opts.get("n_threads_batch") else None,
        flash_attn=_flash_attn(spec.id, opts.get("flash_attn", "auto")),
        mmproj=mmproj,
    )


def _flash_attn(model_id: str, mode) -> str:
    """"auto" (the default, as llama-server's `-fa auto`), "on" or "off". Flash attention
    matters most over a large KV cache: with the batch engine's shared cache of 4 x 2048
    cells, one SmolLM2 stream decodes ~25% faster with it on 2 CPU cores."""
    if mode is True or mode == "on":
        return "on"
    if mode is False or mode == "off":
        return "off"
    if mode == "auto":
        return "auto"
    raise errors.ModelLoadError(
        f"{model_id}: flash_attn must be \"auto\", \"on\" or \"off\" (or true/false), not {mode!r}")


def _speculative(model_id: str, mode, n_parallel: int) -> str | None:
    if mode in (None, False, "none", ""):
        return None
    if mode != "ngram":
        raise errors.ModelLoadError(
            f"{model_id}: speculative must be \"ngram\" (or none), not {mode!r}")
    if n_parallel <= 1:
        log.warning("%s: speculative decoding runs in the batch engine only (n_parallel > 1)",
                    model_id)
        return None
    return mode


def _threads(model_id: str, opts: dict, budget: int | None) -> tuple[int, bool]:
    """(threads to start with, chosen at run time?): `n_threads` or `threads = N` fix the
    count; `threads = "auto"` (the default) starts at the core's budget and may use up to
    all of the machine's cores."""
    if opts.get("n_threads"):
        return int(opts["n_threads"]), False
    mode = opts.get("threads", "auto")
    if mode == "auto":
        return int(budget or 1), True
    if isinstance(mode, bool) or not isinstance(mode, int) or mode < 1:
        raise errors.ModelLoadError(
            f"{model_id}: threads must be \"auto\" or a number of threads >= 1, not {mode!r}")
    return mode, False


def _pooling(model_id: str, pooling, meta: dict) -> dict:
    if pooling is None and "pooling" not in meta:
        pooling = "mean"  # a generative model has no pooling of its own
    if pooling is None:
        return {}
    names = {v: k for k, v in POOLING.items()}
    if isinstance(pooling, str) and pooling not in names:
        raise errors.ModelLoadError(
            f"{model_id}: unknown pooling {pooling!r} (one of {sorted(names)})")
    return {"pooling_type": names[pooling] if isinstance(pooling, str) else int(pooling)}
