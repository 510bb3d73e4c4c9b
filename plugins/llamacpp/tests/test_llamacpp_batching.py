"""Continuous batching (`n_parallel` > 1): concurrent requests decoded in one llama.cpp batch."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from llama_api.contract.records import GenerateRequest, LoadContext, ModelSpec
from llama_api.testing import BackendConformance

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")

import llama_api_llamacpp as plugin
from llama_api_llamacpp.tiny import EXACT_OPTIONS

PROMPTS = ["hello world", "the cat is a dog", "yes no yes no", "Paris weather"]


@pytest.fixture(scope="module")
def batched(tiny_path):
    spec = ModelSpec(id="tiny-par", backend="llamacpp", path=str(tiny_path),
                     options={"n_parallel": 4, **EXACT_OPTIONS})
    model = plugin.load_model(spec=spec, context=LoadContext(n_threads=1)).model
    yield model
    plugin.unload_model(model=model)


def run(model, **fields):
    deltas = list(plugin.generate(model=model, request=GenerateRequest(**fields),
                                  cancelled=threading.Event()))
    return "".join(d.text for d in deltas), deltas[-1]


def test_slots_and_info(batched):
    assert batched.slots == 4
    assert batched.info["n_parallel"] == 4
    assert batched.n_ctx == 2048


def test_kv_cache_bytes_per_token_from_the_header():
    from llama_api_llamacpp.gguf_meta import kv_cache_bytes_per_token

    base = {"general.architecture": "llama", "llama.block_count": 30,
            "llama.embedding_length": 576, "llama.attention.head_count": 9,
            "llama.attention.head_count_kv": 3}
    assert kv_cache_bytes_per_token(base) == 30 * 3 * (64 + 64) * 2  # SmolLM2-135M: 22.5 KiB
    # per-layer head counts (0: a layer without attention), explicit key/value lengths
    per_layer = {**base, "llama.block_count": 3, "llama.attention.head_count_kv": [2, 0, 4],
                 "llama.attention.key_length": 128, "llama.attention.value_length": 96}
    assert kv_cache_bytes_per_token(per_layer) == (2 + 4) * (128 + 96) * 2
    assert kv_cache_bytes_per_token(base, type_k=8, type_v=8) == 30 * 3 * 128 * 34 // 32
    assert kv_cache_bytes_per_token({**base, "llama.attention.head_count_kv": None,
                                     "llama.attention.head_count": 9}) is not None
    assert kv_cache_bytes_per_token({"general.architecture": "llama"}) is None


def test_default_parallel_fits_the_kv_budget(tiny_path, tiny_default):
    from llama_api_llamacpp.gguf_meta import kv_cache_bytes_per_token, read_kv
    from llama_api_llamacpp.options import auto_parallel

    assert tiny_default.slots == 4 and tiny_default.engine is not None
    assert auto_parallel(1000, 1000, 1.0) == 1  # 1 MB holds one 1 MB cache
    assert auto_parallel(1000, 1000, 100.0) == 4  # never more than 4 by default
    assert auto_parallel(None, 1000, 100.0) == 1  # unknown size: no batching
    per_seq = kv_cache_bytes_per_token(read_kv(tiny_path)) * 2048
    budget = 2.5 * per_seq / 2**20
    loaded = []
    try:
        for options, slots, want in (({"kv_cache_mb": budget}, None, 2),
                                     ({"kv_cache_mb": 0.5 * per_seq / 2**20}, None, 1),
                                     ({"kv_cache_mb": budget}, 3, 3),  # `slots` wins
                                     ({"n_parallel": 1}, 4, 1)):  # and `n_parallel` over it
            spec = ModelSpec(id="tiny-budget", backend="llamacpp", path=str(tiny_path),
                             options=options, slots=slots)
            model = plugin.load_model(spec=spec, context=LoadContext(n_threads=1)).model
            loaded.append(model)
            assert model.slots == want and model.info["n_parallel"] == want
            assert (model.engine is None) == (want == 1)
            assert model.info["kv_cache_mb"] == pytest.approx(want * per_seq / 2**20, abs=0.1)
    finally:
        for model in loaded:
            plugin.unload_model(model=model)


def test_the_engine_starts_at_the_thread_budget_and_follows_the_tuner(tiny_spec):
    """A fresh model (the shared one's tuner may have tried other counts since): its batch
    engine's context starts at the threads the core gave, and a count the tuner applies
    reaches that context, not the unused high-level one."""
    model = plugin.load_model(spec=tiny_spec, context=LoadContext(n_threads=1)).model
    try:
        lib, ctx = model.lib, model.engine.ctx
        assert (lib.llama_n_threads(ctx), lib.llama_n_threads_batch(ctx)) == (1, 1)
        model._set_threads(2)
        assert (lib.llama_n_threads(ctx), lib.llama_n_threads_batch(ctx)) == (2, 2)
    finally:
        plugin.unload_model(model=model)


def test_concurrent_greedy_equals_one_at_a_time(tiny_plain, batched):
    expected = [run(tiny_plain, prompt=p, max_tokens=40, temperature=0.0) for p in PROMPTS]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda p: run(batched, prompt=p, max_tokens=40, temperature=0.0),
                            PROMPTS))
    for (text_a, last_a), (text_b, last_b) in zip(expected, got):
        assert text_a == text_b
        assert last_a.usage == last_b.usage
        assert last_a.finish_reason == last_b.finish_reason


class CountingEnds:
    """A model's `lib` that counts the end-of-generation checks made through it."""

    def __init__(self, real):
        self.real = real
        self.asked: list[int] = []

    def __getattr__(self, name):
        return getattr(self.real, name)

    def llama_vocab_is_eog(self, vocab, token):
        self.asked.append(token)
        return self.real.llama_vocab_is_eog(vocab, token)


@pytest.mark.parametrize("path", ["batched", "plain"])
def test_the_end_token_ends_with_stop_checked_once(request, path):
    """The model's end token ends the choice with `stop`, neither sent nor counted; the
    batch engine checks for it in its own thread, so the request thread never does (the
    engine's `lib` is its own), and the plain path checks each token once."""
    model = request.getfixturevalue("batched" if path == "batched" else "tiny_plain")
    real = model.lib
    eos = real.llama_vocab_eos(model.vocab)
    counting = model.lib = CountingEnds(real)
    try:
        text, last = run(model, prompt=PROMPTS[0], max_tokens=20, temperature=0.0,
                         logprobs=1, logit_bias={eos: 100.0})
        ended = list(counting.asked)
        _, full = run(model, prompt=PROMPTS[1], max_tokens=6, temperature=0.0)
    finally:
        model.lib = real
    assert (text, last.finish_reason, last.usage.completion_tokens) == ("", "stop", 0)
    assert full.finish_reason == "length" and full.usage.completion_tokens == 6
    if path == "batched":
        assert counting.asked == []
    else:
        assert ended == [eos] and len(counting.asked) == 1 + 6


def test_more_requests_than_sequences_queue_up(batched):
    prompts = PROMPTS * 3
    with ThreadPoolExecutor(12) as pool:
        got = list(pool.map(lambda p: run(batched, prompt=p, max_tokens=10, temperature=0.0),
                            prompts))
    assert all(last.usage.completion_tokens == 10 for _, last in got)
    assert [text for text, _ in got[:4]] == [text for text, _ in got[4:8]]


def test_long_prompt_is_decoded_in_chunks(tiny_plain, batched):
    prompt = "hello world " * 50  # more tokens than one batch (512)
    assert len(tiny_plain.prompt_tokens(prompt)) > 512
    assert run(batched, prompt=prompt, max_tokens=12, temperature=0.0)[0] == \
        run(tiny_plain, prompt=prompt, max_tokens=12, temperature=0.0)[0]


def test_seed_stop_logprobs_and_grammar_under_batching(batched):
    first = run(batched, prompt=PROMPTS[0], max_tokens=30, temperature=1.0, seed=5)[0]
    assert first == run(batched, prompt=PROMPTS[0], max_tokens=30, temperature=1.0, seed=5)[0]
    full = run(batched, prompt=PROMPTS[1], max_tokens=30, temperature=0.0)[0]
    stop = full[8:11]
    text, last = run(batched, prompt=PROMPTS[1], max_tokens=30, temperature=0.0, stop=[stop])
    assert last.finish_reason == "stop" and stop not in text and full.startswith(text)
    deltas = list(plugin.generate(model=batched, request=GenerateRequest(
        prompt=PROMPTS[2], max_tokens=5, temperature=0.0, logprobs=2),
        cancelled=threading.Event()))
    lps = [lp for d in deltas for lp in (d.logprobs or [])]
    assert len(lps) == 5 and all(lp.logprob == pytest.approx(lp.top[0].logprob) for lp in lps)
    text, last = run(batched, prompt=PROMPTS[3], max_tokens=30,
                     extra={"grammar": 'root ::= "你好" "!"'})
    assert text == "你好!" and last.finish_reason == "stop"


def test_cancel_one_request_while_others_run(batched):
    cancelled = threading.Event()
    results = {}

    def long_one():
        count = 0
        for delta in plugin.generate(model=batched, request=GenerateRequest(
                prompt=PROMPTS[0], max_tokens=1000, temperature=1.0, seed=1),
                cancelled=cancelled):
            count += 1 if delta.text else 0
            if count == 3:
                cancelled.set()
            last = delta
        results["long"] = last

    thread = threading.Thread(target=long_one)
    thread.start()
    results["other"] = run(batched, prompt=PROMPTS[1], max_tokens=50, temperature=0.0)[1]
    thread.join(timeout=60)
    assert results["long"].usage.completion_tokens < 20
    assert results["other"].usage.completion_tokens == 50


def test_prompt_prefix_is_reused_from_a_finished_sequence(tiny_plain, batched):
    system = "hello world " * 20
    first = system + "the cat"
    second = system + "the dog"
    run(batched, prompt=first, max_tokens=8, temperature=0.0)
    before = batched.engine.reused_tokens
    text, last = run(batched, prompt=second, max_tokens=8, temperature=0.0)
    shared = len(tiny_plain.prompt_tokens(system))
    assert batched.engine.reused_tokens - before >= shared - 2
    assert text == run(tiny_plain, prompt=second, max_tokens=8, temperature=0.0)[0]
    assert last.usage.prompt_tokens == len(tiny_plain.prompt_tokens(second))
    # the very same prompt again: everything but its last token is reused
    before = batched.engine.reused_tokens
    assert run(batched, prompt=second, max_tokens=8, temperature=0.0)[0] == text
    assert batched.engine.reused_tokens - before == len(tiny_plain.prompt_tokens(second)) - 1


def test_a_failed_step_fails_the_requests_in_flight_only(batched):
    from llama_api import errors

    engine = batched.engine
    real = engine.lib

    class FailingDecode:
        def __getattr__(self, name):
            return getattr(real, name)

        def llama_decode(self, ctx, batch):
            raise RuntimeError("boom")

    engine.lib = FailingDecode()
    try:
        with pytest.raises(errors.LlamaApiError, match="boom"):
            run(batched, prompt=PROMPTS[0], max_tokens=5)
    finally:
        engine.lib = real
    assert run(batched, prompt=PROMPTS[0], max_tokens=5, temperature=0.0)[1].usage.completion_tokens == 5


def test_a_full_shared_kv_cache_still_gives_exact_answers(tiny_path, tiny_plain):
    # 4 sequences of 256 tokens each fill the shared cache (4 x 256 cells) to the last cell,
    # twice (the second round reuses and trims the cached prefixes of the first).
    spec = ModelSpec(id="tiny-full", backend="llamacpp", path=str(tiny_path),
                     options={"n_parallel": 4, "n_ctx": 256, **EXACT_OPTIONS})
    model = plugin.load_model(spec=spec, context=LoadContext(n_threads=1)).model
    try:
        assert model.info["kv_unified"] is True
        lib = model.lib
        no_end = {t: -100.0 for t in range(model.n_vocab)
                  if lib.llama_vocab_is_eog(model.vocab, t)}
        for round_ in range(2):
            prompts = [f"{p} {round_} " * (2 + i) for i, p in enumerate(PROMPTS)]
            sizes = [len(model.prompt_tokens(p)) for p in prompts]
            assert all(20 < size < 200 for size in sizes), sizes
            with ThreadPoolExecutor(4) as pool:
                got = list(pool.map(lambda p: run(model, prompt=p, max_tokens=256,
                                                  temperature=0.0, logit_bias=no_end),
                                    prompts))
            for prompt, size, (text, last) in zip(prompts, sizes, got):
                assert last.finish_reason == "length"
                assert last.usage.completion_tokens == 256 - size  # the whole context
                ref = run(tiny_plain, prompt=prompt, max_tokens=256 - size, temperature=0.0,
                          logit_bias=no_end)
                assert text == ref[0]
    finally:
        plugin.unload_model(model=model)


def test_no_room_in_the_kv_cache_is_a_clean_error(batched):
    from llama_api import errors

    engine = batched.engine
    real = engine.lib
    run(batched, prompt=PROMPTS[0], max_tokens=5)  # leaves a cached prefix
    calls = []

    class NoRoom:
        def __init__(self, times):
            self.times = times

        def __getattr__(self, name):
            return getattr(real, name)

        def llama_decode(self, ctx, batch):
            calls.append(1)
            if len(calls) <= self.times:
                return 1  # llama.cpp: no KV slot for this batch
            return real.llama_decode(ctx, batch)

    engine.lib = NoRoom(1)  # once: the cached prefixes are dropped and the step retried
    try:
        assert run(batched, prompt=PROMPTS[1], max_tokens=5, temperature=0.0)[1].usage.completion_tokens == 5
        calls.clear()
        engine.lib = NoRoom(10**6)
        with pytest.raises(errors.LlamaApiError, match="KV cache is full"):
            run(batched, prompt=PROMPTS[2], max_tokens=5)
    finally:
        engine.lib = real
    assert run(batched, prompt=PROMPTS[2], max_tokens=5, temperature=0.0)[1].usage.completion_tokens == 5


class TestBatchedTinyGGUF(BackendConformance):
    generates = True
    embeds = False

    @pytest.fixture
    def model_spec(self, tiny_path):
        return ModelSpec(id="tiny-par", backend="llamacpp", path=str(tiny_path),
                         options={"n_parallel": 2}, plugin="llamacpp")

    @pytest.fixture
    def bad_model_spec(self, tmp_path):
        path = tmp_path / "corrupt-weights.gguf"
        path.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 100)
        return ModelSpec(id="corrupt", backend="llamacpp", path=str(path), plugin="llamacpp",
                         options={"n_parallel": 2})


def test_echo_logprobs_of_a_long_prompt_across_chunks(tiny_plain, batched):
    prompt = "hello world " * 50  # more tokens than one batch (512)
    n = len(tiny_plain.prompt_tokens(prompt))
    results = []
    for model in (tiny_plain, batched):
        deltas = list(plugin.generate(model=model, request=GenerateRequest(
            prompt=prompt, max_tokens=2, temperature=0.0, echo=True, logprobs=0),
            cancelled=threading.Event()))
        results.append([lp for d in deltas for lp in (d.logprobs or [])])
    plain, got = results
    assert len(got) == len(plain) == n + 2
    assert got[0].logprob is None and plain[0].logprob is None
    for a, b in zip(plain[1:], got[1:]):
        assert a.bytes == b.bytes
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)


def test_no_sequence_passes_its_own_context(batched):
    # The shared KV cache has n_parallel x n_ctx cells, and llama.cpp would let one sequence
    # use them all: the engine itself refuses a sequence that could pass its n_ctx.
    from llama_api import errors
    from llama_api_llamacpp.batching import Sequence

    engine = batched.engine
    assert engine.n_ctx_per_seq == batched.n_ctx == 2048
    too_long = Sequence([1] * 2000, sampler=None, limit=49, logprobs_fn=None,
                        cancelled=threading.Event())
    with pytest.raises(errors.ContextLengthExceeded):
        engine.submit(too_long)
    # through generate, max_tokens is cut to the room left instead
    _, last = run(batched, prompt=[5] * 2040, max_tokens=100, temperature=0.0)
    assert last.usage.prompt_tokens + last.usage.completion_tokens <= 2048


def test_flash_attention_is_auto_by_default_and_can_be_fixed(tiny_path, tiny_default):
    lib = tiny_default.lib
    assert tiny_default.info["flash_attn"] == "auto"
    assert tiny_default.engine.context.params.flash_attn_type == lib.LLAMA_FLASH_ATTN_TYPE_AUTO
    expected = run(tiny_default, prompt="hello world", max_tokens=12, temperature=0.0)
    for mode, flash_type in (("off", lib.LLAMA_FLASH_ATTN_TYPE_DISABLED),
                             (True, lib.LLAMA_FLASH_ATTN_TYPE_ENABLED)):
        spec = ModelSpec(id="tiny-fa", backend="llamacpp", path=str(tiny_path),
                         options={"n_parallel": 2, "flash_attn": mode})
        model = plugin.load_model(spec=spec, context=LoadContext(n_threads=1)).model
        try:
            assert model.engine.context.params.flash_attn_type == flash_type
            text, last = run(model, prompt="hello world", max_tokens=12, temperature=0.0)
            assert last.usage == expected[1].usage and text
        finally:
            plugin.unload_model(model=model)
    with pytest.raises(Exception, match="flash_attn must be"):
        plugin.load_model(spec=ModelSpec(id="tiny-fa", backend="llamacpp", path=str(tiny_path),
                                         options={"flash_attn": "sometimes"}),
                          context=LoadContext(n_threads=1))
