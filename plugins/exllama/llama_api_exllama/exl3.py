"""exllamav3 (1.6) adapter: EXL3 and unquantized folders. Imported only in the worker, on a GPU."""

from __future__ import annotations

import logging
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from llama_api.contract.records import LoadContext
from llama_api_exllama.adapter import DynamicJobs, load_with
from llama_api_exllama.generation import Sampling
from llama_api_exllama.options import LoadOptions

log = logging.getLogger(__name__)


def _version() -> str:
    try:
        return version("exllamav3")
    except PackageNotFoundError:
        return "?"


class Exl3Adapter(DynamicJobs):
    def __init__(self, folder: Path, opts: LoadOptions, context: LoadContext):
        import torch
        from exllamav3 import (
            Cache,
            CacheLayer_fp16,
            CacheLayer_quant,
            Config,
            Generator,
            Job,
            Model,
            Tokenizer,
        )
        from exllamav3.generator.sampler import ComboSampler

        self._torch = torch
        self._Job = Job
        self._ComboSampler = ComboSampler
        started = time.perf_counter()

        config = Config.from_directory(str(folder))
        model = Model.from_config(config)
        self.model = model
        # The cache must exist before model.load(): loading allocates its tensors.
        if opts.cache_type == "fp16":
            cache = Cache(
                model,
                max_num_tokens=opts.cache_size,
                layer_type=CacheLayer_fp16,
                max_batch_size=opts.max_batch_size,
            )
        else:
            bits = int(opts.cache_type[1:])
            cache = Cache(
                model,
                max_num_tokens=opts.cache_size,
                layer_type=CacheLayer_quant,
                max_batch_size=opts.max_batch_size,
                k_bits=bits,
                v_bits=bits,
            )
        self.cache = cache
        load_args = {
            "progressbar": False,
            "callback": lambda done, total: context.report(
                f"loading modules {done}/{total}", done / max(total, 1)
            ),
            "max_batch_size": opts.max_batch_size,
        }
        if opts.max_chunk_size is not None:
            load_args["max_chunk_size"] = opts.max_chunk_size
        if opts.gpu_split is not None:
            load_args["use_per_device"] = opts.gpu_split
        elif opts.reserve_vram is not None:
            load_args["reserve_per_device"] = opts.reserve_vram
        model.load(**load_args)
        self.tokenizer = Tokenizer.from_config(config)
        self.vocab_size = config.vocab_size
        gen_args = {
            "model": model, "cache": cache, "tokenizer": self.tokenizer,
            "max_batch_size": opts.max_batch_size,
        }
        if opts.max_chunk_size is not None:
            gen_args["max_chunk_size"] = opts.max_chunk_size
        self.generator = Generator(**gen_args)
        if opts.warmup:
            context.report("warming up", None)
            self.generator.generate("Once upon a time,", max_new_tokens=8)
        self.slots = opts.max_batch_size
        self.info = {
            "library": f"exllamav3 {_version()}",
            "cache_type": opts.cache_type,
            "cache_size": opts.cache_size,
            "max_seq_len": opts.max_seq_len,
            "max_batch_size": opts.max_batch_size,
            "gpu_memory_bytes": [
                torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count())
            ],
            "load_library_seconds": round(time.perf_counter() - started, 3),
        }

    def sampler(self, s: Sampling):
        return self._ComboSampler(
            rep_p=s.repetition_penalty,
            freq_p=s.frequency_penalty,
            pres_p=s.presence_penalty,
            temperature=0.0 if s.greedy else s.temperature,
            min_p=s.min_p,
            top_k=s.top_k,
            top_p=s.top_p,
            logit_bias=dict(s.logit_bias) if s.logit_bias else None,
        )

    def sampling_arguments(self, sampling: Sampling) -> dict:
        return {"sampler": self.sampler(sampling)}

    def unload(self) -> None:
        import gc

        try:
            self.generator.clear_queue()
            self.generator.close()
        except Exception:
            log.exception("closing the exllamav3 generator failed")
        self.model.unload()
        try:
            self.cache.detach_from_model()
        except Exception:
            log.debug("detaching the exllamav3 cache failed", exc_info=True)
        self.generator = self.cache = self.model = self.tokenizer = None
        gc.collect()
        self._torch.cuda.empty_cache()


def load(folder: Path, opts: LoadOptions, context: LoadContext) -> Exl3Adapter:
    return load_with(Exl3Adapter, "exllamav3", folder, opts, context)
