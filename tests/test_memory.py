"""Memory-aware scheduling against real echo workers: an echo model's file is its "weights"
(the worker holds its bytes; the echo plugin estimates the file's size), so padded files
make models of known size. Estimates and measured RSS are printed (pytest -s)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llama_api.api.state import server_state
from llama_api.scheduling import memory
from llama_api.scheduling.entries import Settings
from llama_api.scheduling.memory import (
    WORKER_BASE_BYTES,
    Footprint,
    MemoryBudget,
    format_size,
    parse_size,
)
from llama_api_echo import USER

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


def chat(client, model: str):
    return client.post(client.v1 + "/chat/completions",
                       json={"model": model, "messages": USER, "max_tokens": 3})


def loaded(client) -> set[str]:
    return set(server_state(client.app).scheduler.loaded())


def report(client) -> None:
    scheduler = server_state(client.app).scheduler
    for model_id, entry in scheduler.loaded().items():
        print(f"{model_id}: estimated {format_size(scheduler.memory.estimate(entry.spec).host)}, "
              f"measured RSS {format_size(entry.memory.host)} (pid {entry.worker.pid})")


# -- sizes and limits ------------------------------------------------------------------

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


# -- scheduling with real echo workers ----------------------------------------------------

def test_the_least_recently_used_model_is_evicted_when_memory_is_short(
        memory_models, start_app):
    with start_app(scheduling=Settings(max_workers=3, max_memory=LIMIT)) as client:
        scheduler = server_state(client.app).scheduler
        spec_w1 = server_state(client.app).registry.models["w1"]
        assert scheduler.memory.estimate(spec_w1) == Footprint(WEIGHTS + WORKER_BASE_BYTES, 0)
        for name in ("w1", "w2"):
            assert chat(client, name).status_code == 200
        assert loaded(client) == {"w1", "w2"}
        report(client)
        for entry in scheduler.loaded().values():  # measured, not estimated: the bytes held
            assert WEIGHTS < entry.memory.host < WEIGHTS + 4 * WORKER_BASE_BYTES

        assert chat(client, "w3").status_code == 200  # w1 is the least recently used
        assert loaded(client) == {"w2", "w3"}
        assert chat(client, "w2").status_code == 200  # now w3 is
        assert chat(client, "w1").status_code == 200
        assert loaded(client) == {"w1", "w2"}
        report(client)


def test_a_model_larger_than_the_limit_is_refused_with_both_numbers(memory_models, start_app):
    with start_app(scheduling=Settings(max_workers=3, max_memory=LIMIT)) as client:
        assert chat(client, "w1").status_code == 200
        response = chat(client, "huge")
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
        assert chat(client, "w1").status_code == 200
        assert chat(client, "w2").status_code == 200
        assert loaded(client) == {"w2"}


def test_a_pinned_model_is_never_evicted_for_memory(memory_models, start_app):
    with start_app(scheduling=Settings(max_workers=3, max_memory=LIMIT)) as client:
        scheduler = server_state(client.app).scheduler
        for name in ("w1", "w2"):
            assert chat(client, name).status_code == 200
        scheduler.pin("w1")  # the least recently used, but pinned
        assert chat(client, "w3").status_code == 200
        assert loaded(client) == {"w1", "w3"}

        scheduler.pin("w3")
        response = chat(client, "w2")  # only pinned models hold the memory: waiting can't help
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "pinned_models_hold_memory"
        assert loaded(client) == {"w1", "w3"}


# -- the embeddings plugin's estimate (no torch: file sizes only) ------------------------

def test_an_encoder_is_estimated_from_its_safetensors_and_dtype(tmp_path):
    pytest.importorskip("llama_api_embeddings")
    from llama_api.contract.records import ModelSpec
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


def test_plugins_hear_of_a_gpu_even_when_its_memory_is_unlimited(monkeypatch):
    """--max-gpu-memory 0 means no limit, not no GPU: estimates still place layers on it
    (nvidia-smi is the part faked: this machine has no GPU)."""
    from llama_api.scheduling.entries import Settings

    monkeypatch.setattr(memory, "gpu_total", lambda: 80 * 2**30)
    unlimited = memory.MemoryBudget.from_settings(Settings(max_gpu_memory=0))
    assert (unlimited.limits.gpu, unlimited.gpu) == (0, True)
    assert memory.MemoryBudget.from_settings(Settings()).gpu is True
    monkeypatch.setattr(memory, "gpu_total", lambda: None)
    assert memory.MemoryBudget.from_settings(Settings(max_gpu_memory=0)).gpu is False
