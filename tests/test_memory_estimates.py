"""What a model is estimated to take before it loads: the estimate kept until the model's file
changes, made off the event loop once per model, and told whether the server has a GPU
budget (even an unlimited one); the embeddings plugin's encoders from their safetensors,
dtype and device (the core's GPU answer deciding `auto`); llama.cpp's GGUF layers offloaded
to the GPU. How the scheduler uses the estimates: test_memory.py."""

from __future__ import annotations

import os
import threading
import time

import anyio
import pytest

from llama_api.contract.records import GenerateRequest, ModelSpec
from llama_api.scheduling import memory
from llama_api.scheduling.entries import Settings
from llama_api.scheduling.memory import Footprint, MemoryBudget
from llama_api.scheduling.scheduler import Scheduler
from llama_api.workers.plugins import Plugins

MiB = 2**20


# -- the core's estimates ------------------------------------------------------------------

class CountingPlugins(Plugins):
    """The echo plugin, seeing every estimate the core asks it for."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, bool, int]] = []  # model id, gpu, thread

    def estimate_memory(self, spec, gpu: bool):
        self.calls.append((spec.id, gpu, threading.get_ident()))
        return super().estimate_memory(spec, gpu)


def counting_plugins(monkeypatch) -> CountingPlugins:
    monkeypatch.setenv("LLAMA_API_PLUGINS", "echo")
    return CountingPlugins()


def test_an_estimate_is_kept_until_the_model_file_changes_and_is_told_of_the_gpu(
        tmp_path, monkeypatch):
    plugins = counting_plugins(monkeypatch)
    path = tmp_path / "m.echo"
    path.write_text("{}" + " " * 1000)
    spec = ModelSpec(id="m", backend="echo", path=str(path), plugin="echo")
    budget = MemoryBudget(Footprint(2**40, 2**40), plugins)
    first = budget.estimate(spec)
    assert budget.estimate(spec) == first and len(plugins.calls) == 1
    assert plugins.calls[0][1] is True  # a GPU budget: the plugin needn't look for one
    path.write_text("{}" + " " * 5000)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a clearly newer mtime
    assert budget.estimate(spec).host == first.host + 4000
    assert len(plugins.calls) == 2
    MemoryBudget(Footprint(2**40, 0), plugins).estimate(spec)
    assert plugins.calls[-1][1] is False  # no GPU budget


def test_the_scheduler_estimates_off_the_event_loop_once_per_model(models_dir, monkeypatch):
    plugins = counting_plugins(monkeypatch)
    spec = ModelSpec(id="fast", backend="echo", path=str(models_dir / "fast.echo"), plugin="echo")

    async def main():
        scheduler = Scheduler(Settings(max_workers=1), plugins=plugins)
        async with scheduler.running():
            loop_thread = threading.get_ident()
            for _ in range(2):
                async with scheduler.lease(spec) as worker:
                    async for _ in worker.generate(GenerateRequest(prompt="hi", max_tokens=2)):
                        pass
                await scheduler.unload("fast")
            return loop_thread

    loop_thread = anyio.run(main)
    assert [call[0] for call in plugins.calls] == ["fast"]  # two loads, one estimate
    assert plugins.calls[0][2] != loop_thread


def test_plugins_hear_of_a_gpu_even_when_its_memory_is_unlimited(monkeypatch):
    """--max-gpu-memory 0 means no limit, not no GPU: estimates still place layers on it
    (nvidia-smi is the part faked: this machine has no GPU)."""
    monkeypatch.setattr(memory, "gpu_total", lambda: 80 * 2**30)
    unlimited = memory.MemoryBudget.from_settings(Settings(max_gpu_memory=0))
    assert (unlimited.limits.gpu, unlimited.gpu) == (0, True)
    assert memory.MemoryBudget.from_settings(Settings()).gpu is True
    monkeypatch.setattr(memory, "gpu_total", lambda: None)
    assert memory.MemoryBudget.from_settings(Settings(max_gpu_memory=0)).gpu is False


# -- the embeddings plugin's estimates (no torch: file sizes only) -------------------------

def test_an_encoder_is_estimated_from_its_safetensors_and_dtype(tmp_path):
    pytest.importorskip("llama_api_embeddings")
    from llama_api_embeddings import memory as embeddings_memory

    folder = tmp_path / "encoder"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert", "torch_dtype": "float32"}')
    for name, size in (("model-00001-of-00002.safetensors", 3 * MiB),
                       ("model-00002-of-00002.safetensors", 1 * MiB),
                       ("pytorch_model.bin", 9 * MiB)):  # the .bin copy is not read
        with open(folder / name, "wb") as f:
            f.truncate(size)
    runtime = embeddings_memory.TORCH_RUNTIME_BYTES

    def estimate(**options):
        spec = ModelSpec(id="enc", backend="transformers", path=str(folder), options=options)
        return embeddings_memory.estimate(spec, gpu=False)

    assert estimate() == (4 * MiB + runtime, 0)
    assert estimate(dtype="float16") == (2 * MiB + runtime, 0)
    assert estimate(device="cuda") == (runtime, 4 * MiB)
    assert estimate(device="auto") == (4 * MiB + runtime, 0)  # no GPU: on the CPU
    missing = ModelSpec(id="gone", backend="transformers", path=str(tmp_path / "gone"))
    assert embeddings_memory.estimate_memory(missing) is None


def test_the_embeddings_estimate_puts_auto_on_the_gpu_the_core_reports(tmp_path, monkeypatch):
    pytest.importorskip("llama_api_embeddings")
    import llama_api_embeddings as plugin

    def no_detection():
        raise AssertionError("the plugin detected the GPU itself")

    monkeypatch.setattr(memory, "gpu_total", no_detection)
    folder = tmp_path / "encoder"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    with open(folder / "model.safetensors", "wb") as f:
        f.truncate(2**20)
    spec = ModelSpec(id="enc", backend="transformers", path=str(folder),
                     options={"device": "auto"})
    host, gpu = plugin.estimate_memory(spec=spec, gpu=True)
    assert gpu == 2**20 and host < 2**30
    host, gpu = plugin.estimate_memory(spec=spec, gpu=False)
    assert gpu == 0 and host > 2**20
    # through pluggy, as the server calls it (pluggy before 1.7 dropped `gpu` while the
    # plugin gave it a default): the GPU answer reaches the plugin either way
    plugins = Plugins(only="embeddings")
    assert not plugins.broken
    assert plugins.estimate_memory(spec, True)[1] == 2**20
    assert plugins.estimate_memory(spec, False) == (host, gpu)


# -- llama.cpp's estimates -----------------------------------------------------------------

def test_offloaded_layers_move_their_share_to_the_gpu(tmp_path):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    from llama_api_llamacpp import gguf_spec
    from llama_api_llamacpp import memory as gguf_memory
    from llama_api_llamacpp.tiny import write_tiny_gguf

    path = write_tiny_gguf(tmp_path / "t.gguf", n_layer=4)

    def estimate(gpu: bool, **options):
        spec = gguf_spec(path, "t")
        spec.plugin = "llamacpp"
        spec.options = {**spec.options, **options}
        return gguf_memory.estimate(spec, gpu=gpu)

    everything = sum(estimate(False))
    assert estimate(False)[1] == 0  # no GPU: n_gpu_layers (default -1) changes nothing
    host, gpu = estimate(True)  # every layer offloaded: only the libraries stay on the host
    assert host == gguf_memory.RUNTIME_BYTES and host + gpu == everything
    host, gpu = estimate(True, n_gpu_layers=1)  # one layer of four
    assert gpu == pytest.approx((everything - gguf_memory.RUNTIME_BYTES) / 4, abs=2)
    _, gpu_without_kv = estimate(True, n_gpu_layers=1, offload_kqv=False)
    assert gpu_without_kv < gpu
    assert sum(estimate(False, n_ctx=512)) < everything  # a smaller context, smaller caches
