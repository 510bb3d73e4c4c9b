"""Fakes of the two GPU libraries (`exllamav2`, `exllamav3`) for the adapter tests, which
run on CPU (test_exllama_adapters.py imports them; conftest.py puts this folder on sys.path).

They have the constructors and methods the adapters call, with the real libraries' parameter
names and no **kwargs (exllamav2 0.3.2, exllamav3 1.6.5), so a misspelled keyword or a wrong
call order fails. They compute nothing: their generator emits one token per job per
`iterate()`, like FakeDynamicGenerator in test_exllama_engine.py. What the real kernels do is
for the GPU tests. `CALLS` records every call, in order.
"""


from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import pytest

import llama_api_exllama as plugin
from llama_api.contract.records import LoadContext, ModelSpec

torch = pytest.importorskip("torch")

CALLS: list[tuple] = []


class FakeGeneratorBase:
    """Shared by both fake libraries: enqueue / iterate / cancel over fake jobs."""

    def __init__(self):
        self.pending, self.active = [], []

    def enqueue(self, job):
        self.pending.append(job)
        return len(self.pending)

    def cancel(self, job):
        for jobs in (self.pending, self.active):
            if job in jobs:
                jobs.remove(job)
        CALLS.append(("cancel", job.identifier))

    def clear_queue(self):
        self.pending.clear()
        self.active.clear()
        CALLS.append(("clear_queue",))

    def iterate(self):
        results = []
        self.active += self.pending
        self.pending = []
        for job in list(self.active):
            job.new_tokens += 1
            r = {
                "job": job,
                "stage": "streaming",
                "identifier": job.identifier,
                "eos": False,
                "text": f" t{job.new_tokens}",
                "token_ids": torch.tensor([[5]]),
            }
            if job.new_tokens >= job.max_new_tokens:
                r.update(eos=True, eos_reason="max_new_tokens", new_tokens=job.new_tokens)
                self.active.remove(job)
            results.append(r)
        return results


def fake_exllamav2(paged: bool) -> dict[str, types.ModuleType]:
    root = types.ModuleType("exllamav2")
    root.__version__ = "0.3.2-fake"
    attn = types.ModuleType("exllamav2.attn")
    attn.has_flash_attn_with_paged = paged
    gen = types.ModuleType("exllamav2.generator")

    class ExLlamaV2Config:
        def __init__(self, model_dir: str | None = None):
            self.model_dir = model_dir
            self.max_seq_len = 2048
            self.max_batch_size = 1
            self.max_input_len = 2048
            self.max_attention_size = 2048**2
            self.scale_pos_emb = 1.0
            self.scale_alpha_value = 1.0
            self.no_flash_attn = False
            self.vocab_size = 17
            CALLS.append(("v2.config", model_dir))

        def arch_compat_overrides(self, quiet: bool = False, warn_only=False):
            CALLS.append(("v2.arch_compat_overrides", quiet))

    class ExLlamaV2:
        def __init__(self, config, lazy_load=False, archparams=None):
            self.config = config

        def load(
            self,
            gpu_split=None,
            lazy=False,
            stats=False,
            callback=None,
            callback_gen=None,
            progress=False,
        ):
            CALLS.append(("v2.load", gpu_split))
            callback(1, 2)
            callback(2, 2)

        def load_autosplit(
            self,
            cache,
            reserve_vram=None,
            last_id_only=False,
            callback=None,
            callback_gen=None,
            progress=False,
        ):
            assert cache.lazy, "autosplit needs a lazy cache"
            CALLS.append(("v2.load_autosplit", type(cache).__name__, reserve_vram))
            callback(2, 2)

        def unload(self):
            CALLS.append(("v2.unload",))

    def cache_class(name):
        def __init__(
            self,
            model,
            batch_size=1,
            max_seq_len=-1,
            copy_from=None,
            lazy=False,
            num_key_value_heads=None,
            fixed_device=None,
        ):
            self.max_seq_len, self.lazy = max_seq_len, lazy
            CALLS.append(("v2.cache", name, max_seq_len, lazy))

        return type(name, (), {"__init__": __init__})

    class ExLlamaV2Tokenizer:
        def __init__(self, config, lazy_init=True, force_json=False, force_spm=False):
            self.config = config

    @dataclass
    class Settings:
        token_repetition_penalty: float = 1.025
        token_frequency_penalty: float = 0.0
        token_presence_penalty: float = 0.0
        temperature: float = 0.8
        top_k: int = 50
        top_p: float = 0.8
        min_p: float = 0
        token_bias: object = None

    class ExLlamaV2Sampler:
        pass

    ExLlamaV2Sampler.Settings = Settings

    class ExLlamaV2DynamicGenerator(FakeGeneratorBase):
        def __init__(
            self,
            model,
            cache,
            tokenizer,
            max_batch_size=None,
            max_seq_len=None,
            max_chunk_size=None,
            max_q_size=8,
            draft_model=None,
            draft_cache=None,
            num_draft_tokens=4,
            use_ngram_draft=False,
            max_ngram=4,
            max_sampling_threads=16,
            min_sampling_threads=3,
            paged=True,
            filter_background_eval=True,
        ):
            super().__init__()
            assert (
                max_batch_size * max_q_size
                <= model.config.max_batch_size * model.config.max_input_len
            )
            assert cache.max_seq_len % 256 == 0
            CALLS.append(("v2.generator", max_batch_size, max_seq_len, max_chunk_size, paged))

        def warmup(self):
            CALLS.append(("v2.warmup",))

    class ExLlamaV2DynamicJob:
        def __init__(
            self,
            input_ids,
            max_new_tokens,
            min_new_tokens=0,
            max_skips=4,
            gen_settings=None,
            seed=None,
            stop_conditions=None,
            decode_special_tokens=False,
            return_top_tokens=0,
            return_logits=False,
            return_probs=False,
            filters=None,
            filter_prefer_eos=False,
            token_healing=False,
            identifier=None,
            banned_strings=None,
            embeddings=None,
        ):
            assert input_ids.dtype == torch.long and input_ids.shape[0] == 1
            self.input_ids, self.max_new_tokens, self.gen_settings = (
                input_ids,
                max_new_tokens,
                gen_settings,
            )
            self.seed, self.stop_conditions, self.identifier = seed, stop_conditions, identifier
            self.new_tokens = 0
            CALLS.append(("v2.job", self))

    root.ExLlamaV2Config, root.ExLlamaV2, root.ExLlamaV2Tokenizer = (
        ExLlamaV2Config,
        ExLlamaV2,
        ExLlamaV2Tokenizer,
    )
    for name in ("ExLlamaV2Cache", "ExLlamaV2Cache_Q4", "ExLlamaV2Cache_Q6", "ExLlamaV2Cache_Q8"):
        setattr(root, name, cache_class(name))
    root.attn, root.generator = attn, gen
    gen.ExLlamaV2DynamicGenerator, gen.ExLlamaV2DynamicJob = (
        ExLlamaV2DynamicGenerator,
        ExLlamaV2DynamicJob,
    )
    gen.ExLlamaV2Sampler = ExLlamaV2Sampler
    return {"exllamav2": root, "exllamav2.attn": attn, "exllamav2.generator": gen}


def fake_exllamav3() -> dict[str, types.ModuleType]:
    root = types.ModuleType("exllamav3")
    gen = types.ModuleType("exllamav3.generator")
    sampler = types.ModuleType("exllamav3.generator.sampler")

    class Config:
        @staticmethod
        def from_directory(directory: str):
            config = Config()
            config.directory, config.vocab_size = directory, 17
            CALLS.append(("v3.config", directory))
            return config

    class Model:
        def __init__(self, config):
            self.config, self.loaded = config, False

        @staticmethod
        def from_config(config, component: str = "text"):
            return Model(config)

        def load(
            self,
            device=None,
            tp_output_device=None,
            reserve_per_device=None,
            use_per_device=None,
            tensor_p=False,
            progressbar=False,
            max_chunk_size=2048,
            max_output_size=32,
            max_output_factor=1,
            callback=None,
            generator=True,
            tp_dev_limits=None,
            tp_backend="native",
            verbose=False,
            max_batch_size=1,
            tp_options=None,
            autosplit_no_forward=False,
            draft_model=None,
        ):
            assert self.cache is not None, "the cache must exist before model.load()"
            self.loaded = True
            CALLS.append(("v3.load", use_per_device, reserve_per_device, max_batch_size))
            callback(1, 1)

        def unload(self):
            CALLS.append(("v3.unload",))

    class CacheLayer_fp16:
        pass

    class CacheLayer_quant:
        pass

    class Cache:
        def __init__(
            self,
            model,
            max_num_tokens,
            layer_type=None,
            max_batch_size=16,
            max_history=0,
            recurrent_dtype=None,
            k_bits=None,
            v_bits=None,
        ):
            assert not model.loaded
            model.cache = self
            CALLS.append(("v3.cache", max_num_tokens, layer_type.__name__, k_bits, v_bits))

        def detach_from_model(self, model=None):
            CALLS.append(("v3.detach",))

    class Tokenizer:
        @staticmethod
        def from_config(config):
            return Tokenizer()

    class Generator(FakeGeneratorBase):
        def __init__(self, model, cache, tokenizer, max_batch_size=256, max_chunk_size=2048):
            super().__init__()
            assert model.loaded
            CALLS.append(("v3.generator", max_batch_size, max_chunk_size))

        def generate(self, prompt, max_new_tokens=None):
            CALLS.append(("v3.warmup", max_new_tokens))

        def close(self):
            CALLS.append(("v3.close",))

    class Job:
        def __init__(
            self,
            input_ids,
            max_new_tokens=None,
            min_new_tokens=0,
            max_skips=4,
            sampler=None,
            seed=None,
            stop_conditions=None,
            decode_special_tokens=False,
            return_top_tokens=0,
            return_logits=False,
            return_probs=False,
            filters=None,
            token_healing=False,
            identifier=None,
            banned_strings=None,
            embeddings=None,
            max_rq_tokens=None,
            stop_on_loop=None,
            rq_state=None,
        ):
            assert input_ids.dtype == torch.long and input_ids.shape[0] == 1
            self.max_new_tokens, self.sampler, self.seed = max_new_tokens, sampler, seed
            self.stop_conditions, self.identifier, self.new_tokens = stop_conditions, identifier, 0
            CALLS.append(("v3.job", self))

    @dataclass
    class ComboSampler:
        rep_p: float = 1.0
        freq_p: float = 0.0
        pres_p: float = 0.0
        temperature: float = 1.0
        min_p: float = 0.0
        top_k: int = 0
        top_p: float = 1.0
        logit_bias: dict = field(default=None)

    for obj in (Config, Model, CacheLayer_fp16, CacheLayer_quant, Cache, Tokenizer, Generator, Job):
        setattr(root, obj.__name__, obj)
    sampler.ComboSampler = ComboSampler
    root.generator, gen.sampler = gen, sampler
    return {"exllamav3": root, "exllamav3.generator": gen, "exllamav3.generator.sampler": sampler}


@pytest.fixture
def fake_gpu(monkeypatch):
    """CUDA 'available' and the fake libraries in sys.modules; returns a function to install one."""
    CALLS.clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda i=0: 123)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: CALLS.append(("empty_cache",)))

    def install(modules):
        for name, module in modules.items():
            monkeypatch.setitem(sys.modules, name, module)

    return install


def load(folder, backend, **options):
    spec = ModelSpec(id=folder.name, backend=backend, path=str(folder), options=options)
    progress = []
    model = plugin.load_model(
        spec=spec, context=LoadContext(progress=lambda m, f=None: progress.append(m))
    ).model
    return model, progress


def jobs(prefix):
    return [c[1] for c in CALLS if c[0] == f"{prefix}.job"]
