"""Generation on a tiny random-weight GGUF, in-process: parameters, stops, UTF-8, grammar."""

from __future__ import annotations

import json
import threading

import pytest

from llama_api import errors
from llama_api.contract.records import (
    EmbedRequest,
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


def test_chat_uses_the_template_from_the_gguf(tiny, collect):
    _text, deltas = collect(tiny, messages=[{"role": "system", "content": "be brief"},
                                           {"role": "user", "content": "hi"}],
                           max_tokens=5, temperature=0.0)
    expected = len(tiny.prompt_tokens("<|system|>be brief<|end|><|user|>hi<|end|><|assistant|>"))
    assert deltas[-1].usage.prompt_tokens == expected


def test_message_content_is_rendered_as_given(tiny, collect):
    # The core joins text parts (and refuses images) before the backend sees a message.
    _, deltas = collect(tiny, messages=[{"role": "user", "content": "h" + "i"}], max_tokens=5,
                        temperature=0.0)
    assert deltas[-1].usage.prompt_tokens == len(tiny.prompt_tokens("<|user|>hi<|end|><|assistant|>"))


@pytest.fixture(scope="module")
def base_model(tiny_dir):
    model = plugin.load_model(
        spec=ModelSpec(id="tiny-base", backend="llamacpp",
                       path=str(tiny_dir / "plain" / "tiny-base.gguf")),
        context=LoadContext(n_threads=1)).model
    yield model
    plugin.unload_model(model=model)


def test_no_chat_template_is_a_clear_error(base_model, collect):
    with pytest.raises(errors.BadRequest, match="no chat template"):
        collect(base_model, messages=[{"role": "user", "content": "hi"}])
    # completions still work
    assert collect(base_model, prompt=PROMPT, max_tokens=3, temperature=0.0)[1][-1].usage.completion_tokens == 3


@pytest.mark.parametrize("options", [
    {"chat_template": "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
                      "{% endfor %}[assistant] "},
    {"chat_format": "chatml"},
])
def test_chat_template_override(tiny_dir, collect, options):
    model = plugin.load_model(
        spec=ModelSpec(id="x", backend="llamacpp",
                       path=str(tiny_dir / "plain" / "tiny-base.gguf"), options=options),
        context=LoadContext(n_threads=1)).model
    try:
        _, deltas = collect(model, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert deltas[-1].usage.completion_tokens <= 3
        assert model.info["chat_template"] is True
    finally:
        plugin.unload_model(model=model)


def test_unknown_chat_format_is_a_load_error(tiny_dir):
    with pytest.raises(errors.ModelLoadError, match="chat_format"):
        plugin.load_model(
            spec=ModelSpec(id="x", backend="llamacpp", path=str(tiny_dir / "tiny.gguf"),
                           options={"chat_format": "no-such-format"}),
            context=LoadContext(n_threads=1))


TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
            "required": ["city"],
        },
    },
}, {
    "type": "function",
    "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"utc": {"type": "boolean"}}, "required": ["utc"]}},
}]


def test_forced_tool_call_streams_arguments(tiny, collect):
    text, deltas = collect(tiny, messages=[{"role": "user", "content": "weather?"}],
                           tools=TOOLS, tool_choice="function", tool_name="get_weather",
                           seed=1, max_tokens=100)
    calls = [c for d in deltas for c in (d.tool_calls or [])]
    assert calls[0].id.startswith("call_") and calls[0].name == "get_weather"
    assert all(c.index == 0 for c in calls)
    arguments = json.loads("".join(c.arguments for c in calls))
    assert arguments["city"] in ("Paris", "Rome")
    assert text == ""
    assert deltas[-1].finish_reason == "tool_calls"


@pytest.mark.parametrize("seed", [1, 2])
def test_required_tool_call(tiny, collect, seed):
    _text, deltas = collect(tiny, messages=[{"role": "user", "content": "weather?"}],
                           tools=TOOLS, tool_choice="required", seed=seed, max_tokens=100,
                           parallel_tool_calls=False)
    (call,) = [c for d in deltas for c in (d.tool_calls or [])]
    assert call.name in ("get_weather", "get_time")
    assert isinstance(json.loads(call.arguments), dict)
    assert deltas[-1].finish_reason == "tool_calls"


@pytest.mark.parametrize("seed", [1, 2, 5])
def test_required_tool_calls_in_parallel(tiny, collect, seed):
    # The grammar allows an array of 1..n calls; with these seeds the tiny model makes
    # one call (seed 1) or two (2, 5), each sent with its own index.
    _text, deltas = collect(tiny, messages=[{"role": "user", "content": "weather?"}],
                           tools=TOOLS, tool_choice="required", seed=seed, max_tokens=300)
    calls = [c for d in deltas for c in (d.tool_calls or [])]
    assert [c.index for c in calls] == list(range(len(calls)))
    assert len(calls) == (1 if seed == 1 else 2)
    assert len({c.id for c in calls}) == len(calls)
    for call in calls:
        assert call.name in ("get_weather", "get_time")
        assert isinstance(json.loads(call.arguments), dict)
    assert deltas[-1].finish_reason == "tool_calls"


def test_tool_choice_is_one_of_the_normalized_choices():
    # The core checks a forced name against `tools` and decodes tool_choice into ToolChoice
    # (a 400 on failure); the backend gets only these.
    import msgspec

    from llama_api.contract.records import ToolChoice

    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"type": "function", "function": {"name": "nope"}}, ToolChoice)
    assert msgspec.convert("function", ToolChoice) == "function"


def test_auto_tool_choice_and_tool_history(tiny, collect):
    messages = [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    _text, deltas = collect(tiny, messages=messages, tools=TOOLS, max_tokens=10, seed=1)
    assert deltas[-1].finish_reason in ("stop", "length", "tool_calls")


def test_parse_tool_calls():
    from llama_api_llamacpp.tools import parse_tool_calls

    names = {"f", "g"}
    text = '<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>\n' \
           '<tool_call>{"name": "g", "arguments": {}}</tool_call>'
    assert parse_tool_calls(text, names) == [
        {"name": "f", "arguments": '{"a": 1}'}, {"name": "g", "arguments": "{}"}]
    assert parse_tool_calls('{"name": "f", "parameters": {"b": 2}}', names) == [
        {"name": "f", "arguments": '{"b": 2}'}]
    assert parse_tool_calls("just text", names) is None
    assert parse_tool_calls('{"name": "h"}', names) is None
    assert parse_tool_calls("<tool_call>{broken", names) is None
    # arguments are always a JSON object: encoded ones must decode, others are not calls
    assert parse_tool_calls('{"name": "f", "arguments": "{\\"a\\": 1}"}', names) == [
        {"name": "f", "arguments": '{"a": 1}'}]
    assert parse_tool_calls('{"name": "f"}', names) == [{"name": "f", "arguments": "{}"}]
    for bad in ('"not json"', '"[1]"', "[1, 2]", "3"):
        assert parse_tool_calls(f'{{"name": "f", "arguments": {bad}}}', names) is None, bad


# -- embeddings -------------------------------------------------------------------------

def test_chat_model_does_not_embed(tiny):
    with pytest.raises(errors.NotSupported):
        plugin.embed(model=tiny, request=EmbedRequest(input=["hello"]))


@pytest.fixture(scope="module")
def embedder(tiny_dir):
    path = tiny_dir / "tiny-embed.gguf"
    (spec,) = [s for s in plugin.discover_models(models_dir=tiny_dir) if s.path == str(path)]
    model = plugin.load_model(spec=spec,
                              context=LoadContext(n_threads=1)).model
    yield model
    plugin.unload_model(model=model)


def test_embeddings_are_pooled_normalized_with_exact_usage(embedder):
    import numpy as np

    inputs = ["hello world", "the cat", "hello world"]
    result = plugin.embed(model=embedder, request=EmbedRequest(input=inputs))
    vectors = np.asarray(result.embeddings)
    assert vectors.shape == (3, 64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors[0], vectors[2], atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])
    expected = sum(len(embedder.tokenize(t, add_bos=embedder.add_bos, special=False))
                   for t in inputs)
    assert result.prompt_tokens == expected


def test_embedding_of_token_ids_at_full_width(embedder):
    import numpy as np

    ids = embedder.tokenize("hello world", add_bos=embedder.add_bos, special=False)
    a = plugin.embed(model=embedder, request=EmbedRequest(input=[ids]))
    b = plugin.embed(model=embedder, request=EmbedRequest(input=["hello world"]))
    assert np.allclose(a.embeddings, b.embeddings, atol=1e-5)
    # the backend's vectors are whole: `dimensions` is the HTTP layer's to apply
    c = plugin.embed(model=embedder, request=EmbedRequest(input=["hello"]))
    assert np.asarray(c.embeddings).shape == (1, 64)
    with pytest.raises(errors.BadRequest, match="out of range") as info:
        plugin.embed(model=embedder, request=EmbedRequest(input=[[1, embedder.n_vocab]]))
    assert info.value.param == "input"


def test_generative_model_with_embedding_option(tiny_path, collect):
    import numpy as np

    model = plugin.load_model(
        spec=ModelSpec(id="both", backend="llamacpp", path=str(tiny_path),
                       options={"embedding": True}),
        context=LoadContext(n_threads=1)).model
    try:
        result = plugin.embed(model=model, request=EmbedRequest(input=["a", "b c"]))
        assert np.asarray(result.embeddings).shape == (2, 64)
    finally:
        plugin.unload_model(model=model)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_encoder_gguf_is_an_embedding_model(tmp_path, collect, pooling):
    import numpy as np

    from llama_api_llamacpp.tiny import write_tiny_bert_gguf

    write_tiny_bert_gguf(tmp_path / "bert.gguf", pooling=pooling)
    (spec,) = plugin.discover_models(models_dir=tmp_path)[:1]
    assert spec.meta["kind"] == "embedding" and spec.meta["pooling"] == pooling
    assert spec.options == {"embedding": True}
    model = plugin.load_model(spec=spec,
                              context=LoadContext(n_threads=1)).model
    try:
        texts = ["the cat sat on the mat", "hello world", "the cat sat on the mat"]
        result = plugin.embed(model=model, request=EmbedRequest(input=texts))
        vectors = np.asarray(result.embeddings)
        assert vectors.shape == (3, 32)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        assert np.allclose(vectors[0], vectors[2], atol=1e-5)
        # [CLS] and [SEP] are counted
        assert result.prompt_tokens == (6 + 2) * 2 + (2 + 2)
        with pytest.raises(errors.NotSupported, match="embedding model"):
            collect(model, prompt="hello")
        with pytest.raises(errors.ContextLengthExceeded):
            plugin.embed(model=model, request=EmbedRequest(input=["cat " * 600]))
    finally:
        plugin.unload_model(model=model)


class FakeRun:
    """Stands in for a generation: yields fixed pieces."""

    def __init__(self, pieces):
        self.pieces = pieces
        self.finish = "stop"

    def __iter__(self):
        from llama_api.contract.records import Delta

        for piece in self.pieces:
            yield Delta(text=piece)

    @property
    def text(self):
        return "".join(self.pieces)

    def final(self, finish=None):
        from llama_api.contract.records import Delta

        return Delta(finish_reason=finish or self.finish)


def auto(pieces, names=("get_weather",), parallel=True):
    from llama_api_llamacpp.tools import tool_deltas

    deltas = list(tool_deltas(FakeRun(pieces), "auto", None, set(names), parallel=parallel))
    text = "".join(d.text for d in deltas)
    calls = [c for d in deltas for c in (d.tool_calls or [])]
    return text, calls, deltas[-1].finish_reason, deltas


@pytest.mark.parametrize("pieces", [
    ["<tool", "_call>", '{"name": "get_weather", ', '"arguments": {"city": "Paris"}}', "</tool_call>"],
    ["  {", '"name": "get_weather", "parameters": {"city": "Paris"}}'],
    ['[{"name": "get_weather", "arguments": {"city": "Paris"}}]'],
])
def test_auto_mode_recognizes_tool_calls(pieces):
    text, calls, finish, _ = auto(pieces)
    assert text == ""
    assert finish == "tool_calls"
    assert calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Paris"}
    assert calls[0].id.startswith("call_")


PARALLEL_CALLS = ["<tool_call>", '{"name": "get_weather", "arguments": {"city": "Paris"}}',
                  "</tool_call>\n<tool", '_call>{"name": "get_time", "arguments": {"utc": true}}',
                  "</tool_call>", "<tool_call>", '{"name": "get_weather", "arguments": ',
                  '{"city": "Rome"}}</tool_call>']


def test_auto_mode_sends_several_calls_with_their_indices():
    text, calls, finish, _ = auto(PARALLEL_CALLS, names=("get_weather", "get_time"))
    assert (text, finish) == ("", "tool_calls")
    assert [(c.index, c.name) for c in calls] == [
        (0, "get_weather"), (1, "get_time"), (2, "get_weather")]
    assert [json.loads(c.arguments) for c in calls] == [
        {"city": "Paris"}, {"utc": True}, {"city": "Rome"}]
    assert len({c.id for c in calls}) == 3
    # parallel_tool_calls false: the first call only
    _, calls, finish, _ = auto(PARALLEL_CALLS, names=("get_weather", "get_time"),
                               parallel=False)
    assert [(c.index, c.name) for c in calls] == [(0, "get_weather")]
    assert finish == "tool_calls"


def test_auto_mode_streams_plain_text_and_holds_back_a_marker():
    pieces = ["Hello", " there", ", <", "tool", "_call>", '{"name": "get_weather", "arguments": {}}']
    text, calls, finish, deltas = auto(pieces)
    assert text == "Hello there, "
    assert len([d for d in deltas if d.text]) >= 2  # streamed, not all at the end
    assert finish == "tool_calls" and calls[0].name == "get_weather"


def test_auto_mode_text_that_only_looks_like_a_call():
    assert auto(["<b>bold</b> text"])[:3] == ("<b>bold</b> text", [], "stop")
    assert auto(["{not json"])[:3] == ("{not json", [], "stop")
    assert auto(['{"name": "other_tool"}'])[:3] == ('{"name": "other_tool"}', [], "stop")
    assert auto(["a < b and c"])[:3] == ("a < b and c", [], "stop")


TOOL_TEMPLATE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>{% endif %}"
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}"
    "{% for call in m.tool_calls or [] %}<call>{{ call.function.arguments | tojson }}</call>"
    "{% endfor %}<|end|>{% endfor %}<|assistant|>"
)


def test_template_that_knows_tools_gets_them_hugging_face_style():
    from llama_api.text.chat_template import ChatTemplate
    from llama_api_llamacpp.prompts import PromptBuilder

    prompts = PromptBuilder("m", ChatTemplate(TOOL_TEMPLATE, bos_token="<s>", eos_token="</s>"))
    assert prompts.knows_tools
    tools = [{"type": "function", "function": {"name": "f", "description": "a <b> c"}}]
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
    ]
    prompt = prompts.render(messages, tools, None).text
    assert '"description": "a <b> c"' in prompt  # no HTML escaping
    assert '<call>{"x": 1}</call>' in prompt  # arguments as a mapping, not a string
    assert "You can call these functions" not in prompt  # no system prompt injected


PYDANTIC_SCHEMA = {  # what openai's client.beta.chat.completions.parse() sends for a model
    "$defs": {
        "Color": {"enum": ["red", "blue"], "title": "Color", "type": "string"},
        "Pet": {
            "properties": {
                "kind": {"const": "cat", "title": "Kind", "type": "string"},
                "age": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 20},
                                  {"type": "null"}]},
            },
            "required": ["kind", "age"], "title": "Pet", "type": "object",
            "additionalProperties": False,
        },
    },
    "properties": {
        "color": {"$ref": "#/$defs/Color"},
        "pets": {"items": {"$ref": "#/$defs/Pet"}, "maxItems": 2, "type": "array"},
        "ok": {"type": "boolean"},
    },
    "required": ["color", "pets", "ok"], "title": "Answer", "type": "object",
    "additionalProperties": False,
}


@pytest.mark.parametrize("seed", range(4))
def test_pydantic_style_schema_with_refs_validates(tiny, collect, seed):
    fmt = ResponseFormat(type="json_schema", schema=PYDANTIC_SCHEMA)
    text, _deltas = collect(tiny, prompt="hi", response_format=fmt, seed=seed, max_tokens=300)
    data = json.loads(text)
    assert set(data) == {"color", "pets", "ok"}
    assert data["color"] in ("red", "blue") and isinstance(data["ok"], bool)
    assert len(data["pets"]) <= 2
    for pet in data["pets"]:
        assert pet["kind"] == "cat"
        assert pet["age"] is None or 0 <= pet["age"] <= 20


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
