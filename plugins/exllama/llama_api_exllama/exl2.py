"""exllamav2 (0.3) adapter: GPTQ and EXL2 folders. Imported only in the worker, on a GPU."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from llama_api.contract.records import LoadContext
from llama_api_exllama.adapter import DynamicJobs, load_with
from llama_api_exllama.generation import Sampling
from llama_api_exllama.options import LoadOptions

log = logging.getLogger(__name__)


def gpu_memory() -> list[int]:
    import torch

    return [torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count())]


class Exl2Adapter(DynamicJobs):
    def __init__(self, folder: Path, opts: LoadOptions, context: LoadContext):
        import exllamav2
        import torch
        from exllamav2 import (
            ExLlamaV2,
            ExLlamaV2Cache,
            ExLlamaV2Cache_Q4,
            ExLlamaV2Cache_Q6,
            ExLlamaV2Cache_Q8,
            ExLlamaV2Config,
            ExLlamaV2Tokenizer,
        )
        from exllamav2 import attn as exl2_attn
        from exllamav2.generator import (
            ExLlamaV2DynamicGenerator,
            ExLlamaV2DynamicJob,
            ExLlamaV2Sampler,
        )

        self._torch = torch
        self._Job = ExLlamaV2DynamicJob
        self._Settings = ExLlamaV2Sampler.Settings
        started = time.perf_counter()

        config = ExLlamaV2Config(str(folder))  # reads config.json and maps the tensors
        # Turns flash-attn off for architectures it can't run (softcap, sliding window, ...).
        config.arch_compat_overrides(quiet=True)
        config.max_seq_len = opts.max_seq_len
        if opts.rope_scale is not None:
            config.scale_pos_emb = opts.rope_scale
        if opts.rope_alpha is not None:
            config.scale_alpha_value = opts.rope_alpha
        if opts.max_chunk_size is not None:
            config.max_input_len = opts.max_chunk_size
            config.max_attention_size = opts.max_chunk_size**2
        # Paged attention (continuous batching) needs flash-attn >= 2.5.7; without it the
        # dynamic generator runs one sequence at a time.
        self.paged = bool(exl2_attn.has_flash_attn_with_paged) and not config.no_flash_attn
        batch = opts.max_batch_size if self.paged else 1
        # The generator needs max_batch_size * max_q_size (8) <= config batch * max_input_len.
        while batch * 8 > config.max_batch_size * config.max_input_len:
            config.max_batch_size += 1

        cache_class = {
            "fp16": ExLlamaV2Cache,
            "q8": ExLlamaV2Cache_Q8,
            "q6": ExLlamaV2Cache_Q6,
            "q4": ExLlamaV2Cache_Q4,
        }[opts.cache_type]
        model = ExLlamaV2(config)
        self.model = model
        progress = lambda done, total: context.report(
            f"loading layers {done}/{total}", done / max(total, 1)
        )
        if opts.autosplit:
            cache = cache_class(model, max_seq_len=opts.cache_size, lazy=True)
            reserve = [int(gb * 1024**3) for gb in opts.reserve_vram] if opts.reserve_vram else None
            model.load_autosplit(cache, reserve_vram=reserve, callback=progress)
        else:
            model.load(gpu_split=opts.gpu_split, callback=progress)
            cache = cache_class(model, max_seq_len=opts.cache_size)
        self.cache = cache
        self.tokenizer = ExLlamaV2Tokenizer(config)
        self.vocab_size = config.vocab_size
        self.generator = ExLlamaV2DynamicGenerator(
            model=model,
            cache=cache,
            tokenizer=self.tokenizer,
            max_batch_size=batch,
            max_seq_len=opts.max_seq_len,
            max_chunk_size=opts.max_chunk_size,
            paged=self.paged,
        )
        if opts.warmup:
            context.report("warming up", None)
            self.generator.warmup()
        self.slots = batch
        self.info = {
            "library": f"exllamav2 {exllamav2.__version__}",
            "paged": self.paged,
            "cache_type": opts.cache_type,
            "cache_size": opts.cache_size,
            "max_seq_len": opts.max_seq_len,
            "max_batch_size": batch,
            "gpu_memory_bytes": gpu_memory(),
            "load_library_seconds": round(time.perf_counter() - started, 3),
        }
        if not self.paged and opts.max_batch_size > 1:
            self.info["note"] = "flash-attn >= 2.5.7 is not installed: one request at a time"

    def settings(self, s: Sampling):
        settings = self._Settings()
        if s.greedy:
            settings.temperature = 1.0
            settings.top_k = 1
            settings.top_p = 0.0
            settings.min_p = 0.0
        else:
            settings.temperature = s.temperature
            settings.top_k = s.top_k
            settings.top_p = s.top_p if s.top_p < 1.0 else 0.0  # 0 disables top-p
            settings.min_p = s.min_p
        settings.token_repetition_penalty = s.repetition_penalty
        settings.token_presence_penalty = s.presence_penalty
        settings.token_frequency_penalty = s.frequency_penalty
        if s.logit_bias:
            padding = -self.vocab_size % 32
            bias = self._torch.zeros((self.vocab_size + padding,), dtype=self._torch.float)
            for token, value in s.logit_bias.items():
                bias[token] = value
            settings.token_bias = bias
        return settings

    def sampling_arguments(self, sampling: Sampling) -> dict:
        return {"gen_settings": self.settings(sampling)}

    def unload(self) -> None:
        import gc

        try:
            self.generator.clear_queue()
        except Exception:
            log.exception("clearing the exllamav2 queue failed")
        self.model.unload()
        self.generator = self.cache = self.model = self.tokenizer = None
        gc.collect()
        self._torch.cuda.empty_cache()


def load(folder: Path, opts: LoadOptions, context: LoadContext) -> Exl2Adapter:
    return load_with(Exl2Adapter, "exllamav2", folder, opts, context)
