"""Chunked prefill: a new request's long prompt is decoded in chunks beside running streams."""

from __future__ import annotations

import threading
import time
from itertools import pairwise

import pytest

from llama_api.contract.records import GenerateRequest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")

import llama_api_llamacpp as plugin
from llama_api_llamacpp.tiny import EXACT_OPTIONS

LONG = "The quick brown fox jumps over the lazy dog near the river bank. " * 80


def text_of(model, prompt, max_tokens):
    return "".join(d.text for d in model.generate(GenerateRequest(
        prompt=prompt, max_tokens=max_tokens, temperature=0.0), threading.Event()))


def test_chunked_prompt_gives_the_same_greedy_output(tiny_path, tiny_plain, load_gguf):
    model = load_gguf(tiny_path, "tiny-chunks", prefill_chunk=16, **EXACT_OPTIONS)
    try:
        assert model.engine.prefill_chunk == 16 and model.info["prefill_chunk"] == 16
        alone = text_of(tiny_plain, LONG[:1200], 20)
        results = {}
        stream = threading.Thread(target=lambda: results.update(
            running=text_of(model, "hello world", 300)))
        stream.start()
        time.sleep(0.05)
        results["long"] = text_of(model, LONG[:1200], 20)  # its prompt arrives mid-stream
        stream.join()
        assert results["long"] == alone
        assert results["running"] == text_of(tiny_plain, "hello world", 300)
    finally:
        plugin.unload_model(model=model)


@pytest.mark.serial  # alone: it compares gaps between tokens
def test_a_long_prompt_mid_stream_delays_the_stream_by_about_one_chunk(smollm2_spec,
                                                                        load_gguf):
    model = load_gguf(smollm2_spec.path, "smol-chunks", prefill_chunk=64, n_ctx=2048)
    try:
        n_prompt = len(model.prompt_tokens(LONG))
        assert n_prompt > 600
        arrivals, events = [], {}

        def stream():
            for delta in model.generate(GenerateRequest(
                    prompt="Tell me a long story about a dragon.", max_tokens=400,
                    temperature=0.0, logit_bias={model.lib.llama_vocab_eos(model.vocab): -100.0}),
                    threading.Event()):
                arrivals.append(time.perf_counter())
                if "long_done" in events and len(arrivals) > events["count_at_done"] + 3:
                    return

        runner = threading.Thread(target=stream)
        runner.start()
        while len(arrivals) < 5:
            time.sleep(0.01)
        events["submitted"] = time.perf_counter()
        for delta in model.generate(GenerateRequest(prompt=LONG, max_tokens=1, temperature=0.0),
                                    threading.Event()):
            events.setdefault("first", time.perf_counter())
        events["count_at_done"] = len(arrivals)
        events["long_done"] = True
        runner.join(timeout=120)
        prefill = events["first"] - events["submitted"]
        during = [b - a for a, b in pairwise(arrivals)
                  if events["submitted"] <= b <= events["first"]]
        chunks = n_prompt / 64
        # the stream kept going while the prompt was read: one token per chunk at least
        assert len(during) >= chunks / 2, (len(during), chunks)
        # and no gap came near the whole prompt's time (the old way: 512 tokens per step)
        assert max(during) < 4 * prefill / chunks, (max(during), prefill, chunks)
    finally:
        plugin.unload_model(model=model)
