"""N-gram speculative decoding (`speculative = "ngram"`): drafts, and output unchanged."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from llama_api.contract.records import GenerateRequest
from llama_api_llamacpp.speculative import NgramDrafter

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")

import llama_api_llamacpp as plugin
from llama_api_llamacpp.tiny import EXACT_OPTIONS

PROMPTS = ["hello world hello world hello", "the cat is a dog the cat is a", "yes no yes no yes",
           "abc abc abc abc"]
EDIT = ("Repeat this text exactly: The little robot walked to the market, bought three red "
        "apples and a loaf of bread, and walked home again under the grey sky.\n\nThe little "
        "robot walked")


def test_a_draft_is_what_followed_the_newest_ngram_before():
    drafter = NgramDrafter([5, 6, 7, 8, 9, 1, 5, 6, 7], max_draft=3)
    assert drafter.draft() == [8, 9, 1]
    drafter.extend([2])  # 6 7 2 never occurred: the 2-gram 7 2 neither
    assert drafter.draft() == []
    assert NgramDrafter([1, 2, 3], max_draft=4).draft() == []
    # 256 and 1 share bytes with a misaligned match (0x0100 0000 0001 ...): not a match
    assert NgramDrafter([256, 1, 0, 9, 1, 0], max_draft=2).draft() == [9, 1]


def run(model, prompt, **fields):
    deltas = list(model.generate(GenerateRequest(prompt=prompt, **fields), threading.Event()))
    return "".join(d.text for d in deltas), deltas[-1].usage, deltas[-1].finish_reason


@pytest.fixture(scope="module")
def tiny_pair(tiny_path, load_gguf):
    plain = load_gguf(tiny_path, "tiny-plain2", **EXACT_OPTIONS)
    spec = load_gguf(tiny_path, "tiny-spec", speculative="ngram", draft_tokens=4, **EXACT_OPTIONS)
    yield plain, spec
    plugin.unload_model(model=plain)
    plugin.unload_model(model=spec)


def test_greedy_and_seeded_outputs_are_those_of_plain_decoding(tiny_pair):
    plain, spec = tiny_pair
    assert spec.info["speculative"] == "ngram" and plain.info["speculative"] is None
    for prompt in PROMPTS:
        assert run(spec, prompt, max_tokens=60, temperature=0.0) == \
            run(plain, prompt, max_tokens=60, temperature=0.0)
        sampled = {"max_tokens": 40, "temperature": 0.9, "seed": 11}
        assert run(spec, prompt, **sampled) == run(plain, prompt, **sampled)
    assert spec.engine.accepted > 0  # drafts were kept, not only tried
    with ThreadPoolExecutor(2) as pool:  # two drafting sequences in one batch
        got = list(pool.map(lambda p: run(spec, p, max_tokens=50, temperature=0.0), PROMPTS))
    assert got == [run(plain, p, max_tokens=50, temperature=0.0) for p in PROMPTS]


def test_stop_strings_and_limits_with_drafts(tiny_pair):
    plain, spec = tiny_pair
    full = run(plain, PROMPTS[0], max_tokens=40, temperature=0.0)[0]
    stop = full[10:13]
    assert run(spec, PROMPTS[0], max_tokens=40, temperature=0.0, stop=[stop]) == \
        run(plain, PROMPTS[0], max_tokens=40, temperature=0.0, stop=[stop])
    for limit in (1, 2, 3, 7):
        assert run(spec, PROMPTS[3], max_tokens=limit, temperature=0.0) == \
            run(plain, PROMPTS[3], max_tokens=limit, temperature=0.0)


def test_smollm2_greedy_output_follows_plain_decoding(smollm2_spec, load_gguf):
    """On real weights llama.cpp's logits depend a little on the batch's shape (several
    tokens per step): a near tie can go the other way, as it does for two concurrent
    requests against one alone. So: the same text for a long stretch, most drafts kept."""
    plain = load_gguf(smollm2_spec.path, "smol-plain", n_ctx=1024)
    spec = load_gguf(smollm2_spec.path, "smol-spec", n_ctx=1024, speculative="ngram")
    try:
        code = "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n"
        for prompt in (EDIT, "Once upon a time", code):
            got = run(spec, prompt, max_tokens=48, temperature=0.0)[0]
            want = run(plain, prompt, max_tokens=48, temperature=0.0)[0]
            same = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b),
                        min(len(got), len(want)))
            assert same >= 40, (got, want)
        assert spec.engine.accepted > 10
    finally:
        plugin.unload_model(model=plain)
        plugin.unload_model(model=spec)
