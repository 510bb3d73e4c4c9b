"""What a GGUF model will take once llama.cpp loads it, from its file and its options.

Runs in the server process (the `estimate_memory` hook): the GGUF header and the load
options only, no llama.cpp. The parts, each split between host and GPU by the share of
layers offloaded (`n_gpu_layers`, when the core says the server has a GPU):
- weights: the file's size;
- KV cache: bytes per token (from the header) x n_ctx x the sequences decoded together;
- compute buffers, per llama.cpp context: the attention scores and mask of one
  micro-batch over the whole cache (none with flash attention), or the logits of one
  micro-batch, whichever is larger (llama.cpp reuses the memory between them);
- a vision model's projector (mmproj): its file's size, and as much again for the image
  encoder's compute buffer (an allowance: it grows with the encoder's image size);
- llama.cpp's libraries in the worker.
These are upper bounds: llama.cpp reserves compute buffers that short prompts never touch.
"""

from __future__ import annotations

import logging
from pathlib import Path

from llama_api import errors
from llama_api_llamacpp.gguf_meta import GGUFError, read_kv, summarize
from llama_api_llamacpp.options import parse_options

log = logging.getLogger("llama_api_llamacpp")

# llama_cpp, ggml and numpy in a worker, beyond a bare worker (measured: ~32 MiB).
RUNTIME_BYTES = 32 * 2**20
# llama.cpp's default micro-batch (n_ubatch).
N_UBATCH = 512

_headers: dict[tuple, dict] = {}


def _header(path: Path) -> dict:
    """The GGUF key/values, read once per file version (reading skips big arrays in Python)."""
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _headers:
        _headers[key] = read_kv(path)
    return _headers[key]


def compute_bytes(n_ctx: int, n_ubatch: int, n_head: int, n_vocab: int,
                  flash_attn: bool) -> int:
    """The compute buffer one llama.cpp context reserves (f32 scores and mask, or logits)."""
    attention = 0 if flash_attn else n_ubatch * n_ctx * 4 * (n_head + 1)
    logits = n_ubatch * n_vocab * 4
    return max(attention, logits)


def offloaded_share(n_gpu_layers: int, n_layer: int, gpu: bool) -> float:
    """The share of the model llama.cpp puts on the GPU (-1: every layer)."""
    if not gpu or n_gpu_layers == 0 or n_layer <= 0:
        return 0.0
    if n_gpu_layers < 0:
        return 1.0
    return min(n_gpu_layers, n_layer) / n_layer


def estimate(spec, gpu: bool) -> tuple[int, int]:
    """(host bytes, GPU bytes) loading `spec` will take; `gpu`: whether the server has a
    GPU budget (the core decides; without one nothing counts as offloaded)."""
    path = Path(spec.path)
    kv = _header(path)
    meta = summarize(kv)
    opts = parse_options(spec, kv, meta, None)
    arch = kv.get("general.architecture", "")
    n_layer = int(kv.get(f"{arch}.block_count") or 0)
    heads = kv.get(f"{arch}.attention.head_count") or 1
    n_head = max(heads) if isinstance(heads, list) else int(heads) if isinstance(heads, int) else 1
    vocab = kv.get("tokenizer.ggml.tokens")
    n_vocab = (vocab.get("array_length", 0) if isinstance(vocab, dict)
               else len(vocab) if isinstance(vocab, list) else 0)
    params = opts.llama_params
    flash = opts.flash_attn == "on"  # "auto" may turn it off: count the larger buffer

    weights = path.stat().st_size
    kv_cache = int((opts.kv_cache_mb or 0) * 2**20)
    # The plain context (its n_ctx is small when a batch engine makes its own) ...
    plain_ctx = int(params["n_ctx"])
    plain_ubatch = min(int(params.get("n_ubatch") or N_UBATCH),
                       int(params.get("n_batch") or N_UBATCH), plain_ctx)
    compute = compute_bytes(plain_ctx, plain_ubatch, n_head, n_vocab, flash)
    if opts.uses_engine:  # ... and the batch engine's, over every sequence's cache
        per_token = kv_cache // max(1, opts.n_ctx * opts.n_parallel)
        kv_cache += per_token * plain_ctx
        compute += compute_bytes(opts.n_ctx * opts.n_parallel, N_UBATCH, n_head, n_vocab, flash)

    if opts.mmproj:  # on the GPU with the model's layers, as mtmd's use_gpu follows them
        weights += 2 * Path(opts.mmproj).stat().st_size
    share = offloaded_share(int(params.get("n_gpu_layers", -1)), n_layer, gpu)
    kv_share = share if params.get("offload_kqv", True) else 0.0
    on_gpu = weights * share + kv_cache * kv_share + compute * share
    total = weights + kv_cache + compute
    return int(total - on_gpu) + RUNTIME_BYTES, int(on_gpu)


def estimate_memory(spec, gpu: bool) -> tuple[int, int] | None:
    """The `estimate_memory` hook's answer for a llamacpp model; None when the file or its
    options can't be read (loading it then says why)."""
    try:
        return estimate(spec, gpu)
    except (GGUFError, OSError, ValueError, TypeError, KeyError, errors.LlamaApiError) as exc:
        log.warning("%s: no memory estimate: %s", spec.id, exc)
        return None
