"""The exllamav2 / exllamav3 adapters, run on CPU against fakes of the two GPU libraries
(exllama_fakes.py): the calls they make, in order, with the real libraries' parameters."""

from __future__ import annotations

import pytest
from exllama_fakes import CALLS, fake_exllamav2, fake_exllamav3, fake_gpu, jobs, load

import llama_api_exllama as plugin
from llama_api.contract.records import GenerateRequest

__all__ = ["fake_gpu"]  # a fixture, used by name


def test_exllamav2_adapter_paged_autosplit(model_writer, fake_gpu):
    fake_gpu(fake_exllamav2(paged=True))
    folder = model_writer("g", quantization_config={"quant_method": "gptq", "bits": 4})
    model, progress = load(
        folder,
        "exllamav2",
        max_seq_len=1000,
        cache_type="q4",
        max_batch_size=6,
        rope_alpha=2.0,
        reserve_vram=[1],
    )
    assert model.slots == 6
    assert ("v2.cache", "ExLlamaV2Cache_Q4", 1024, True) in CALLS
    assert ("v2.load_autosplit", "ExLlamaV2Cache_Q4", [1024**3]) in CALLS
    assert ("v2.generator", 6, 1000, None, True) in CALLS
    assert ("v2.warmup",) in CALLS
    assert progress[-2:] == ["loading layers 2/2", "warming up"]
    assert model.info["library"] == "exllamav2 0.3.2-fake" and model.info["quantization"] == "gptq"

    text = "".join(
        d.text
        for d in model.generate(
            GenerateRequest(
                prompt="the cat", max_tokens=3, temperature=0, logit_bias={4: -100.0}, seed=3
            )
        )
    )
    assert text == " t1 t2 t3"
    (job,) = jobs("v2")
    s = job.gen_settings
    assert (s.temperature, s.top_k, s.top_p, s.token_repetition_penalty) == (1.0, 1, 0.0, 1.0)
    assert s.token_bias.shape == (32,) and s.token_bias[4] == -100
    assert (job.seed, job.stop_conditions, job.max_new_tokens) == (3, [2], 3)
    list(
        model.generate(
            GenerateRequest(
                prompt="the cat",
                max_tokens=2,
                temperature=0.7,
                top_p=1.0,
                top_k=20,
                min_p=0.1,
                presence_penalty=0.5,
                frequency_penalty=0.2,
            )
        )
    )
    s = jobs("v2")[1].gen_settings
    assert (s.temperature, s.top_k, s.top_p, s.min_p) == (0.7, 20, 0.0, 0.1)
    assert (s.token_presence_penalty, s.token_frequency_penalty) == (0.5, 0.2)
    plugin.unload_model(model=model)
    assert [c[0] for c in CALLS[-3:]] == ["clear_queue", "v2.unload", "empty_cache"]


def test_exllamav2_adapter_unpaged_manual_split(model_writer, fake_gpu):
    fake_gpu(fake_exllamav2(paged=False))
    folder = model_writer("e", quantization_config={"quant_method": "exl2", "bits": 4.0})
    model, _ = load(folder, "exllamav2", gpu_split="10,12", warmup=False, max_chunk_size=512)
    assert model.slots == 1  # no flash-attn: one sequence at a time
    assert "note" in model.info
    assert ("v2.load", [10.0, 12.0]) in CALLS
    assert ("v2.cache", "ExLlamaV2Cache", 2048, False) in CALLS
    assert ("v2.generator", 1, 2048, 512, False) in CALLS
    assert ("v2.warmup",) not in CALLS
    plugin.unload_model(model=model)


def test_exllamav3_adapter(model_writer, fake_gpu):
    fake_gpu(fake_exllamav3())
    folder = model_writer("u")
    model, progress = load(folder, "exllamav3", cache_type="q6", gpu_split=[20], max_batch_size=3)
    assert model.slots == 3
    assert ("v3.cache", 2048, "CacheLayer_quant", 6, 6) in CALLS
    assert ("v3.load", [20.0], None, 3) in CALLS
    assert ("v3.generator", 3, 2048) in CALLS  # max_chunk_size: the library default
    assert ("v3.warmup", 8) in CALLS
    assert "loading modules 1/1" in progress
    text = "".join(
        d.text
        for d in model.generate(
            GenerateRequest(
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=2,
                temperature=0.5,
                top_k=7,
                min_p=0.2,
                repeat_penalty=1.2,
                seed=9,
            )
        )
    )
    assert text == " t1 t2"
    (job,) = jobs("v3")
    assert job.sampler == type(job.sampler)(
        rep_p=1.2,
        freq_p=0.0,
        pres_p=0.0,
        temperature=0.5,
        min_p=0.2,
        top_k=7,
        top_p=1.0,
        logit_bias=None,
    )
    assert (job.seed, job.stop_conditions) == (9, [2])
    list(model.generate(GenerateRequest(prompt="x", max_tokens=1, temperature=0)))
    assert jobs("v3")[1].sampler.temperature == 0.0
    plugin.unload_model(model=model)
    assert [c[0] for c in CALLS[-5:]] == [
        "clear_queue",
        "v3.close",
        "v3.unload",
        "v3.detach",
        "empty_cache",
    ]


def test_exllamav3_fp16_cache_and_reserve(model_writer, fake_gpu):
    fake_gpu(fake_exllamav3())
    folder = model_writer("u")
    model, _ = load(folder, "exllamav3", reserve_vram="1.5", max_chunk_size=300, warmup=False)
    assert ("v3.cache", 2048, "CacheLayer_fp16", None, None) in CALLS
    assert ("v3.load", None, [1.5], 8) in CALLS
    assert ("v3.generator", 8, 512) in CALLS
    plugin.unload_model(model=model)


def test_library_load_failure_names_the_model(model_writer, fake_gpu):
    modules = fake_exllamav3()

    def broken(directory):
        raise ValueError("no tensors in model.safetensors")

    modules["exllamav3"].Config.from_directory = staticmethod(broken)
    fake_gpu(modules)
    folder = model_writer("corrupt-weights")
    with pytest.raises(
        plugin.errors.ModelLoadError,
        match="exllamav3 could not load corrupt-weights: ValueError: no tensors",
    ):
        load(folder, "exllamav3")
