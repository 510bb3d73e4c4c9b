"""Threads chosen at run time (`threads = "auto"`): the tuner's rules, and a real contention run."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from llama_api.contract.records import GenerateRequest, LoadContext, ModelSpec
from llama_api_llamacpp.threads import FIRST_WAIT, WIN, ThreadTuner, machine_cores


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def drive(tuner, clock, step_seconds, steps):
    """Run `steps` steps whose time depends on the thread count: step_seconds(n)."""
    for _ in range(steps):
        seconds = step_seconds(tuner.threads)
        clock.now += seconds
        tuner.observe(seconds, 1)


def test_a_collapsing_count_falls_to_one_thread_and_stays():
    clock, applied = Clock(), []
    tuner = ThreadTuner(2, 2, applied.append, clock=clock)
    drive(tuner, clock, lambda n: 0.030, 20)  # idle machine: 2 threads, no reason to move
    drive(tuner, clock, lambda n: 0.500 if n == 2 else 0.045, 12)  # a core taken
    assert tuner.current == 1 and applied[-1] == 1
    drive(tuner, clock, lambda n: 0.500 if n == 2 else 0.045, 200)  # it tries 2 again, rarely
    assert tuner.current == 1
    assert applied.count(2) <= 6, applied  # a lost try waits twice as long as the last


def test_a_faster_count_is_found_upwards_and_a_slower_one_is_left():
    clock, applied = Clock(), []
    tuner = ThreadTuner(1, 4, applied.append, clock=clock)
    drive(tuner, clock, lambda n: {1: 0.040, 2: 0.024, 3: 0.020, 4: 0.030}[n], 400)
    assert tuner.current == 3
    assert tuner.changes == 2


def test_the_server_s_budget_caps_the_count_from_the_next_step_and_lifting_it_frees_it():
    clock, applied = Clock(), []
    tuner = ThreadTuner(2, 2, applied.append, clock=clock)
    drive(tuner, clock, lambda n: 0.030, 10)
    assert tuner.threads == 2
    tuner.budget = 1  # another worker got busy: the server shares the 2 cores
    drive(tuner, clock, lambda n: 0.020 if n == 2 else 0.035, 1)
    assert (tuner.threads, applied[-1]) == (1, 1)
    drive(tuner, clock, lambda n: 0.020 if n == 2 else 0.035, 300)  # 2 would be faster...
    assert tuner.current == 1 and 2 not in applied[applied.index(1):]  # ...but isn't its own
    tuner.budget = 2  # alone again
    drive(tuner, clock, lambda n: 0.020 if n == 2 else 0.035, 300)
    assert tuner.current == 2


def test_fixed_threads_and_tiny_steps_are_never_tuned():
    clock, applied = Clock(), []
    fixed = ThreadTuner(2, 8, applied.append, auto=False, clock=clock)
    drive(fixed, clock, lambda n: 0.5, 50)
    tiny = ThreadTuner(1, 8, applied.append, clock=clock)
    drive(tiny, clock, lambda n: 0.0002, int(10 * FIRST_WAIT / 0.0002))
    assert applied == [] and fixed.threads == 2 and fixed.max_threads == 2
    assert tiny.threads == 1


def test_a_long_prompt_on_an_idle_machine_keeps_every_thread():
    """Prompt chunks of 512 tokens, each slower than the last as the context grows (here
    1.25x per chunk, 40 chunks: 3 minutes): not contention, so no thread is tried away."""
    clock, applied = Clock(), []
    tuner = ThreadTuner(2, 2, applied.append, clock=clock)
    drive(tuner, clock, lambda n: 0.030, 20)  # a few decode steps first
    for chunk in range(40):
        seconds = 0.2 * 1.25 ** min(chunk, 12)
        clock.now += seconds
        tuner.observe(seconds, 512)
    assert applied == [] and tuner.threads == 2


def test_a_candidate_count_is_dropped_when_a_prompt_chunk_comes():
    clock, applied = Clock(), []
    tuner = ThreadTuner(2, 2, applied.append, clock=clock)
    drive(tuner, clock, lambda n: 0.030, 200)  # long enough for a try of 1 thread
    while tuner.threads == 2:
        drive(tuner, clock, lambda n: 0.030, 1)
    tuner.observe(0.5, 300)  # a prompt arrived mid-try
    assert tuner.threads == 2 and applied[-1] == 2


def test_threads_option(tiny_path):
    import llama_api_llamacpp as plugin

    loaded = []
    try:
        for options, want in (({}, ("auto", machine_cores())), ({"threads": 1}, ("fixed", 1)),
                              ({"n_threads": 1}, ("fixed", 1))):
            model = plugin.load_model(spec=ModelSpec(id="t", backend="llamacpp",
                                                     path=str(tiny_path), options=options),
                                      context=LoadContext(n_threads=1)).model
            loaded.append(model)
            assert (model.info["threads"], model.info["max_threads"]) == want
            assert model.info["n_threads"] == 1
        from llama_api import errors

        with pytest.raises(errors.ModelLoadError, match="threads"):
            plugin.load_model(spec=ModelSpec(id="t", backend="llamacpp", path=str(tiny_path),
                                             options={"threads": "many"}),
                              context=LoadContext(n_threads=1))
    finally:
        for model in loaded:
            plugin.unload_model(model=model)


def tokens_per_second(model, n_tokens, eos):
    count, first = 0, None
    for delta in model.generate(GenerateRequest(
            prompt="Once upon a time, in a small village by the sea,", max_tokens=n_tokens,
            temperature=0.0, logit_bias={eos: -100.0}), threading.Event()):
        if delta.text:
            count += 1
            if first is None:
                first = time.perf_counter()
    return (count - 1) / (time.perf_counter() - first)


def cores_in_use(seconds: float = 1.0) -> float:
    """How many cores are busy now, over `seconds` (/proc/stat; the load average would still
    count the minute before)."""
    def ticks():
        fields = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return sum(fields), fields[3] + fields[4]  # all, idle + iowait

    total_before, idle_before = ticks()
    time.sleep(seconds)
    total, idle = ticks()
    busy = 1 - (idle - idle_before) / max(1, total - total_before)
    return busy * (os.cpu_count() or 1)


@pytest.mark.serial  # alone: it times decoding with one core taken
@pytest.mark.skipif(machine_cores() < 2, reason="needs 2 cores")
def test_with_a_core_taken_auto_threads_try_one_keep_the_faster_and_are_not_slower(smollm2_spec):
    pytest.importorskip("llama_cpp")
    import llama_api_llamacpp as plugin
    from llama_api_llamacpp.gguf_meta import read_kv

    eos = read_kv(smollm2_spec.path)["tokenizer.ggml.eos_token_id"]
    cores = sorted(os.sched_getaffinity(0))
    in_use = cores_in_use()
    if in_use > 0.5:
        # Other processes already use the cores: then 2 threads get more CPU share than 1
        # and the tuner rightly keeps 2; this test is about one core taken, the rest idle.
        pytest.skip(f"the machine is already busy ({in_use:.1f} cores in use)")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    os.sched_setaffinity(busy.pid, {cores[0]})
    models = []
    try:
        def load(options):
            spec = ModelSpec(id=smollm2_spec.id, backend="llamacpp", path=smollm2_spec.path,
                             options={"n_ctx": 512, "n_parallel": 2, **options})
            models.append(plugin.load_model(spec=spec, context=LoadContext(n_threads=2)).model)
            return models[-1]

        fixed = load({"threads": 2})
        auto = load({"threads": "auto"})
        time.sleep(0.5)  # the busy loop owns its core
        fixed_rate = tokens_per_second(fixed, 12, eos)
        tokens_per_second(auto, 64, eos)  # it finds its count
        auto_rate = tokens_per_second(auto, 48, eos)
        tries = list(auto.threads.tries)
        assert any(count == 1 for count, _ratio, _won in tries), tries  # it tried one thread
        if auto.threads.current != 1:
            # Hosts differ in what one taken core costs two threads (3-10x on a quiet one;
            # some CI hosts measured 1 thread only ~15% faster): the count stays at 2 only
            # when every try of 1 fell short of the margin a switch needs.
            assert all(not won and ratio > WIN for _count, ratio, won in tries), tries
        assert auto.info["n_threads"] == auto.threads.current
        assert auto.lib.llama_n_threads(auto.engine.ctx) == auto.threads.threads
        # It chose 1 thread because its steps measured faster; how much faster depends on the
        # host (3-10x on a quiet one): that ratio is the benchmark's contention figure, not a
        # unit test's. Here: choosing never made it slower than the fixed count.
        assert auto_rate >= 0.8 * fixed_rate, (auto_rate, fixed_rate)
    finally:
        busy.kill()
        busy.wait()
        for model in models:
            plugin.unload_model(model=model)


def after_a_long_quiet_spell():
    """(tuner, clock, applied counts) after ten minutes of steady steps at 2 threads of 2:
    every try lost, so the waits have grown to their longest."""
    clock, applied = Clock(), []
    tuner = ThreadTuner(2, 2, applied.append, clock=clock)
    drive(tuner, clock, lambda n: 0.030 if n == 2 else 0.060, 20_000)
    assert tuner.current == 2
    return tuner, clock, applied


def test_a_core_taken_after_a_long_quiet_spell_drops_a_thread_within_a_few_steps():
    tuner, clock, _ = after_a_long_quiet_spell()
    # Three times slower at 2 threads, 1 thread now faster: react now, not at the next try.
    drive(tuner, clock, lambda n: 0.090 if n == 2 else 0.060, 10)
    assert tuner.current == 1


def test_a_slowdown_no_count_escapes_becomes_the_usual_time():
    tuner, clock, applied = after_a_long_quiet_spell()
    tries = applied.count(1)
    drive(tuner, clock, lambda n: 0.090 if n == 2 else 0.180, 300)  # 27 s, 2 threads still best
    assert tuner.current == 2
    assert applied.count(1) - tries <= 2  # one try after the slow run, not one every few steps


def test_after_a_slow_run_one_thread_fewer_is_kept_if_a_little_faster():
    tuner, clock, _ = after_a_long_quiet_spell()
    # A core taken: 2 threads 3x slower, 1 thread only a little faster than that (0.9x):
    # an ordinary try needs 0.85x, but after a slow run the current count is known to suffer.
    drive(tuner, clock, lambda n: 0.090 if n == 2 else 0.081, 10)
    assert tuner.current == 1
