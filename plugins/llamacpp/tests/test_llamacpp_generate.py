"""Generation on a tiny random-weight GGUF, in-process: sampling, stops, UTF-8, grammar,
cancellation, the context limit, logprobs and echo."""

from __future__ import annotations

import json
import threading

import pytest

from llama_api import errors
from llama_api.contract.records import (
    GenerateRequest,
    LoadContext,
    ModelSpec,
    ResponseFormat,
)

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")

import llama_api_llamacpp as plugin

PROMPT = "hello world"


def greedy_text(collect, model, **fields):
    return collect(model, prompt=PROMPT, temperature=0.0, **{"max_tokens": 24, **fields})[0]


def test_load_info(tiny):
    assert tiny.slots == (1 if tiny.spec.id == "tiny-plain" else 4)
    assert (tiny.engine is None) == (tiny.slots == 1)
    assert tiny.info["n_ctx"] == 2048
    assert tiny.info["chat_template"] is True
    assert tiny.info["n_threads"] == 1


def test_max_tokens_gives_length_and_exact_usage(tiny, collect):
    _text, deltas = collect(tiny, prompt=PROMPT, max_tokens=7, temperature=0.0)
    last = deltas[-1]
    assert last.finish_reason == "length"
    assert last.usage.completion_tokens == 7
    assert last.usage.prompt_tokens == len(tiny.prompt_tokens(PROMPT))


def test_completions_default_to_16_tokens(tiny, collect):
    _, deltas = collect(tiny, prompt=PROMPT, temperature=0.0)
    assert deltas[-1].usage.completion_tokens == 16


def test_seed_makes_sampling_reproducible(tiny, collect):
    def sample(seed):
        return collect(tiny, prompt=PROMPT, max_tokens=24, temperature=1.0, seed=seed)[0]

    assert sample(7) == sample(7)
    assert len({sample(7), sample(8), sample(9)}) > 1


def test_greedy_ignores_the_seed(tiny, collect):
    assert greedy_text(collect, tiny, seed=1) == greedy_text(collect, tiny, seed=2)


def test_temperature_changes_sampling(tiny, collect):
    hot = collect(tiny, prompt=PROMPT, max_tokens=24, temperature=2.0, seed=3)[0]
    assert hot != greedy_text(collect, tiny)


@pytest.mark.parametrize("field,value", [("top_k", 1), ("top_p", 1e-6), ("min_p", 1.0)])
def test_truncation_samplers_at_their_limit_are_greedy(tiny, collect, field, value):
    sampled = collect(tiny, prompt=PROMPT, max_tokens=24, temperature=1.0, seed=3,
                      **{field: value})[0]
    assert sampled == greedy_text(collect, tiny)


def test_logit_bias_forces_a_token(tiny, collect):
    (token,) = tiny.tokenize("é", add_bos=False, special=False)[-1:]
    text = greedy_text(collect, tiny, logit_bias={token: 100.0}, max_tokens=5)
    assert text.endswith("ééééé")


def test_logit_bias_rejects_bad_tokens(tiny, collect):
    with pytest.raises(errors.BadRequest):
        collect(tiny, prompt=PROMPT, logit_bias={99999999: 1.0})


@pytest.mark.parametrize("field", ["repeat_penalty", "presence_penalty", "frequency_penalty"])
def test_penalties_change_a_repetitive_output(tiny, collect, field):
    # A moderate bias makes greedy output repeat one token; a penalty breaks the loop.
    (token,) = tiny.tokenize("a", add_bos=False, special=False)[-1:]
    bias = {token: 4.0}
    plain = greedy_text(collect, tiny, logit_bias=bias)
    penalized = greedy_text(collect, tiny, logit_bias=bias, **{field: 2.0})
    assert plain != penalized


def test_extra_sampling_fields_are_accepted(tiny, collect):
    _text, deltas = collect(tiny, prompt=PROMPT, max_tokens=8, seed=1,
                           extra={"mirostat_mode": 2, "mirostat_tau": 4.0, "mirostat_eta": 0.2})
    assert deltas[-1].usage.completion_tokens == 8
    for extra in ({"mirostat_mode": 1}, {"typical_p": 0.5},
                  {"xtc_probability": 0.5, "xtc_threshold": 0.05}):
        first = collect(tiny, prompt=PROMPT, max_tokens=8, seed=4, extra=extra)[0]
        assert first == collect(tiny, prompt=PROMPT, max_tokens=8, seed=4, extra=extra)[0]


def test_extra_sampling_fields_reach_the_sampler(tiny, collect):
    # Hot sampling differs from seed to seed; each extra, pushed to its limit, leaves one
    # candidate per step: the same text for every seed.
    greedy = greedy_text(collect, tiny, max_tokens=12)

    def texts(**extra):
        return {collect(tiny, prompt=PROMPT, max_tokens=12, temperature=1.5, min_p=0.0,
                        seed=seed, extra=extra)[0] for seed in (1, 2, 3)}

    assert len(texts()) > 1
    assert len(texts(typical_p=1e-9)) == 1  # only the most "typical" token survives
    # XTC with threshold 0 always removes all but the least likely candidate
    (xtc,) = texts(xtc_probability=1.0, xtc_threshold=0.0)
    assert xtc != greedy
    # mirostat 2 with a target surprise of 0 keeps only the most likely token: greedy
    assert texts(mirostat_mode=2, mirostat_tau=0.0, mirostat_eta=0.1) == {greedy}
    assert len(texts(mirostat_mode=2, mirostat_tau=8.0)) > 1


def test_stop_string_is_not_sent_and_finishes_with_stop(tiny, collect):
    full = greedy_text(collect, tiny, max_tokens=32)
    stop = full[10:13]
    text, deltas = collect(tiny, prompt=PROMPT, max_tokens=32, temperature=0.0, stop=[stop])
    assert deltas[-1].finish_reason == "stop"
    assert text == full[: full.index(stop)]
    assert stop not in text
    # every streamed prefix is a prefix of the answer: nothing was sent and taken back
    assert "".join(d.text for d in deltas) == text


def test_streamed_pieces_never_split_a_character(tiny, collect):
    # Only byte tokens spell these characters, so each one spans several tokens.
    grammar = 'root ::= "你好世界" "ß" "€"'
    text, deltas = collect(tiny, prompt=PROMPT, max_tokens=30, extra={"grammar": grammar})
    assert text == "你好世界ß€"
    pieces = [d.text for d in deltas if d.text]
    assert len(pieces) >= 4
    assert all("\ufffd" not in piece for piece in pieces)
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].usage.completion_tokens >= len("你好世界ß€".encode()) - 2


def test_bad_grammar_is_a_bad_request(tiny, collect):
    with pytest.raises(errors.BadRequest):
        collect(tiny, prompt=PROMPT, extra={"grammar": "root ::= ("})


SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "enum": ["yes", "no"]},
        "sure": {"type": "boolean"},
        "count": {"type": "integer", "minimum": 0, "maximum": 9},
    },
    "required": ["answer", "sure", "count"],
}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_json_schema_output_validates(tiny, collect, seed):
    fmt = ResponseFormat(type="json_schema", schema=SCHEMA)
    text, deltas = collect(tiny, messages=[{"role": "user", "content": "hi"}],
                           response_format=fmt, seed=seed, max_tokens=200)
    data = json.loads(text)
    assert data["answer"] in ("yes", "no")
    assert isinstance(data["sure"], bool)
    assert isinstance(data["count"], int) and 0 <= data["count"] <= 9
    assert set(data) == {"answer", "sure", "count"}
    assert deltas[-1].finish_reason == "stop"


def test_json_object_output_parses(tiny, collect):
    # A random model may ramble inside a string: give it room, only check the shape.
    text, deltas = collect(tiny, prompt=PROMPT,
                           response_format=ResponseFormat(type="json_object"),
                           temperature=0.0, max_tokens=400)
    if deltas[-1].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert text.lstrip().startswith("{")


def test_unsupported_response_format_is_a_bad_request():
    # The core decodes requests into these types (a 400 on failure): a backend never
    # sees a response_format type it doesn't know.
    import msgspec

    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"type": "yaml"}, ResponseFormat)


def test_cancel_stops_before_the_next_token(tiny):
    cancelled = threading.Event()
    request = GenerateRequest(prompt=PROMPT, max_tokens=500, temperature=1.0, seed=1)
    stream = plugin.generate(model=tiny, request=request, cancelled=cancelled)
    count = 0
    last = None
    for delta in stream:
        if delta.text:
            count += 1
            if count == 3:
                cancelled.set()
        last = delta
    assert last.usage.completion_tokens <= 4


def test_closing_the_stream_releases_the_model(tiny, collect):
    stream = plugin.generate(model=tiny, request=GenerateRequest(prompt=PROMPT, max_tokens=100),
                             cancelled=threading.Event())
    next(iter(stream))
    stream.close()
    assert not tiny.lock.locked()
    assert collect(tiny, prompt=PROMPT, max_tokens=3, temperature=0.0)[1][-1].usage.completion_tokens == 3


def test_prompt_longer_than_the_context(tiny_path, collect):
    model = plugin.load_model(
        spec=ModelSpec(id="small", backend="llamacpp", path=str(tiny_path),
                       options={"n_ctx": 256}),
        context=LoadContext(n_threads=1)).model
    try:
        assert model.info["n_ctx"] == 256
        with pytest.raises(errors.ContextLengthExceeded) as info:
            collect(model, prompt="hello " * 400)
        n_prompt = len(model.prompt_tokens("hello " * 400))
        assert str(n_prompt) in info.value.message and "256" in info.value.message
        # a prompt that fits but a max_tokens that doesn't: generate up to the context
        _text, deltas = collect(model, prompt=PROMPT, max_tokens=1000, temperature=0.0)
        assert deltas[-1].finish_reason == "length"
        assert deltas[-1].usage.prompt_tokens + deltas[-1].usage.completion_tokens == 256
    finally:
        plugin.unload_model(model=model)


def test_token_id_prompt(tiny, collect):
    ids = tiny.prompt_tokens(PROMPT)
    assert collect(tiny, prompt=ids, temperature=0.0, max_tokens=12)[0] == \
        greedy_text(collect, tiny, max_tokens=12)
    with pytest.raises(errors.BadRequest):
        collect(tiny, prompt=[10**9])


def test_echo_puts_the_prompt_first(tiny, collect):
    text = collect(tiny, prompt=PROMPT, echo=True, temperature=0.0, max_tokens=8)[0]
    assert text == PROMPT + greedy_text(collect, tiny, max_tokens=8)


def test_completion_logprobs(tiny, collect):
    text, deltas = collect(tiny, prompt=PROMPT, logprobs=3, temperature=0.0, max_tokens=6)
    lps = [lp for d in deltas for lp in (d.logprobs or [])]
    assert len(lps) == 6
    for lp in lps:
        assert lp.logprob <= 0.0
        assert len(lp.top) == 3
        assert lp.top[0].logprob >= lp.top[1].logprob >= lp.top[2].logprob
        # greedy: the chosen token is the most likely one
        assert lp.logprob == pytest.approx(lp.top[0].logprob)
    assert b"".join(bytes(lp.bytes) for lp in lps).decode("utf-8", "replace") == text


def test_chat_logprobs_without_alternatives(tiny, collect):
    _, deltas = collect(tiny, messages=[{"role": "user", "content": "hi"}], logprobs=0,
                        max_tokens=4, seed=1)
    lps = [lp for d in deltas for lp in (d.logprobs or [])]
    assert lps and all(lp.top == [] for lp in lps)


def test_cancel_while_the_prompt_is_read_aborts_it(tiny, collect):
    prompt = "hello world " * 40
    assert len(tiny.prompt_tokens(prompt)) >= 64
    expected = collect(tiny, prompt=prompt + "cat", max_tokens=10, temperature=0.0)[0]
    cancelled = threading.Event()
    cancelled.set()
    text, deltas = collect(tiny, cancelled=cancelled, prompt=prompt, max_tokens=20)
    assert text == "" and deltas[-1].usage.completion_tokens == 0  # not even one token
    # the model is consistent afterwards (its KV cache holds no half-read prompt); the end of
    # generation is biased away, since a sampled random-weight model may pick it in 5 tokens
    n_vocab = tiny.lib.llama_vocab_n_tokens(tiny.vocab)
    no_end = {t: -100.0 for t in range(n_vocab) if tiny.lib.llama_vocab_is_eog(tiny.vocab, t)}
    again = collect(tiny, prompt=PROMPT, max_tokens=5, logit_bias=no_end)[1][-1]
    assert again.usage.completion_tokens == 5, again
    assert collect(tiny, prompt=prompt + "cat", max_tokens=10, temperature=0.0)[0] == expected


def test_echo_with_logprobs_scores_the_prompt(tiny, collect):
    ids = tiny.prompt_tokens(PROMPT)
    text, deltas = collect(tiny, prompt=PROMPT, echo=True, logprobs=2, temperature=0.0,
                           max_tokens=4)
    assert text == PROMPT + greedy_text(collect, tiny, max_tokens=4)  # generation unchanged
    assert deltas[0].text == PROMPT
    lps = [lp for d in deltas for lp in (d.logprobs or [])]
    assert len(lps) == len(ids) + 4
    first, rest = lps[0], lps[1:]
    assert first.logprob is None and first.top == []
    assert first.bytes == list(tiny.piece(ids[0]))
    assert all(lp.logprob <= 0.0 and len(lp.top) == 2 for lp in rest)
    assert [bytes(lp.bytes) for lp in lps[:len(ids)]] == [tiny.piece(t) for t in ids]
    assert deltas[-1].usage.prompt_tokens == len(ids)
    assert deltas[-1].usage.completion_tokens == 4


def test_echoed_prompt_logprobs_equal_the_generated_ones(tiny, collect):
    # Token i's logprob given tokens 0..i-1 is the logprob a generation from that prefix
    # reports for it (forced with a logit bias, which logprobs don't see).
    ids = tiny.prompt_tokens(PROMPT)
    _, echoed = collect(tiny, prompt=ids, echo=True, logprobs=1, max_tokens=0)
    scored = [lp for d in echoed for lp in (d.logprobs or [])]
    assert len(scored) == len(ids) and echoed[-1].usage.completion_tokens == 0
    for i in range(len(ids) - 3, len(ids)):
        _, deltas = collect(tiny, prompt=ids[:i], logprobs=1, max_tokens=1, temperature=0.0,
                            logit_bias={ids[i]: 100.0})
        (generated,) = [lp for d in deltas for lp in (d.logprobs or [])]
        assert generated.bytes == scored[i].bytes
        assert scored[i].logprob == pytest.approx(generated.logprob, abs=1e-3)
        assert scored[i].top[0].logprob == pytest.approx(generated.top[0].logprob, abs=1e-3)


def test_echo_without_logprobs_has_none(tiny, collect):
    text, deltas = collect(tiny, prompt=PROMPT, echo=True, temperature=0.0, max_tokens=0)
    assert text == PROMPT and all(d.logprobs is None for d in deltas)
    assert deltas[-1].usage.completion_tokens == 0
