"""Models that think in tags: their reasoning comes back split from the answer.

Tiny GGUFs whose chat template mentions <think>; a grammar (and a logit bias) makes the
random weights write `<think>...</think>answer`. In `think.gguf` the tags are plain text, so
the tokens cut them at every character; in `think-open.gguf` they are special tokens and
the template's generation prompt opens the tag (DeepSeek-R1, Qwen3 style).
"""

from __future__ import annotations

import json

import anyio
import pytest

from llama_api import errors
from llama_api.contract.records import (
    Delta,
    GenerateRequest,
    LoadContext,
    ModelSpec,
    ResponseFormat,
)
from llama_api.testing.conformance import generate_all, running_worker

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")

import llama_api_llamacpp as plugin
from llama_api_llamacpp.tiny import (
    THINK_OPEN_TEMPLATE,
    THINK_TEMPLATE,
    THINK_TOKENS,
    write_tiny_gguf,
)

ASK = [{"role": "user", "content": "hello"}]
# The model thinks "hello world" in text tags, then answers "yes cat".
THINK_GRAMMAR = 'root ::= "<think>" "hello world" "</think>" "yes cat"'


@pytest.fixture(scope="module")
def think_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("think")
    write_tiny_gguf(folder / "think.gguf", chat_template=THINK_TEMPLATE, seed=4)
    write_tiny_gguf(folder / "think-open.gguf", chat_template=THINK_OPEN_TEMPLATE,
                    special_tokens=THINK_TOKENS, seed=5)
    return folder


def load(model_spec: ModelSpec):
    return plugin.load_model(spec=model_spec, context=LoadContext(n_threads=1)).model


def spec(folder, name, **options) -> ModelSpec:
    return ModelSpec(id=name, backend="llamacpp", path=str(folder / f"{name}.gguf"),
                     plugin="llamacpp", options=options)


@pytest.fixture(scope="module", params=[{}, {"n_parallel": 1}], ids=["default", "plain"])
def thinker(think_dir, request):
    model = load(spec(think_dir, "think", **request.param))
    yield model
    plugin.unload_model(model=model)


@pytest.fixture(scope="module")
def opener(think_dir):
    model = load(spec(think_dir, "think-open"))
    yield model
    plugin.unload_model(model=model)


def split(deltas) -> tuple[str, str]:
    return "".join(d.reasoning for d in deltas), "".join(d.text for d in deltas)


def test_the_tags_come_from_the_template_or_the_option(think_dir, tiny_default):
    assert tiny_default.info["reasoning_tags"] is None  # its template never thinks
    assert tiny_default.reasoning_tags is None
    for options, expected in [({}, ["<think>", "</think>"]),
                              ({"reasoning_tags": False}, None),
                              ({"reasoning_tags": ["[[", "]]"]}, ["[[", "]]"])]:
        model = load(spec(think_dir, "think", n_parallel=1, **options))
        try:
            assert model.info["reasoning_tags"] == expected
        finally:
            plugin.unload_model(model=model)
    with pytest.raises(errors.ModelLoadError, match="reasoning_tags"):
        load(spec(think_dir, "think", reasoning_tags=["<think>"]))


def test_each_token_of_the_thinking_is_split_and_no_tag_leaks(thinker, collect):
    _, deltas = collect(thinker, messages=ASK, max_tokens=40, seed=1,
                        extra={"grammar": THINK_GRAMMAR})
    assert split(deltas) == ("hello world", "yes cat")
    assert deltas[-1].finish_reason == "stop"
    # one token per delta: the tags were cut at every character, and no piece of either
    # field ever held a piece of a tag
    assert deltas[-1].usage.completion_tokens >= len("<think></think>")
    assert sum(1 for d in deltas if d.reasoning) >= 3
    for delta in deltas:
        assert not set(delta.text + delta.reasoning) & set("<>/"), delta
    # reasoning first, then the answer
    first_text = min(i for i, d in enumerate(deltas) if d.text)
    assert not any(d.reasoning for d in deltas[first_text + 1:])


def test_split_reasoning_false_keeps_the_thinking_inline(thinker, collect):
    _, deltas = collect(thinker, messages=ASK, max_tokens=40, split_reasoning=False,
                        extra={"grammar": THINK_GRAMMAR})
    assert split(deltas) == ("", "<think>hello world</think>yes cat")


def test_completions_are_never_split(thinker, collect):
    text, deltas = collect(thinker, prompt="hello", max_tokens=40,
                           extra={"grammar": THINK_GRAMMAR})
    assert (text, split(deltas)[0]) == ("<think>hello world</think>yes cat", "")


def test_the_split_through_a_real_worker(think_dir):
    async def main():
        async with running_worker(spec(think_dir, "think")) as worker:
            results = []
            for split_reasoning in (True, False):
                request = GenerateRequest(messages=ASK, max_tokens=40,
                                          split_reasoning=split_reasoning,
                                          extra={"grammar": THINK_GRAMMAR})
                results.append((await generate_all(worker, request))[1])
            return results

    split_deltas, inline_deltas = anyio.run(main)
    assert split(split_deltas) == ("hello world", "yes cat")
    assert all(not set(d.text + d.reasoning) & set("<>/") for d in split_deltas)
    assert split(inline_deltas) == ("", "<think>hello world</think>yes cat")
    assert split_deltas[-1].finish_reason == inline_deltas[-1].finish_reason == "stop"


def test_a_prompt_that_opens_the_tag_starts_in_the_thinking(opener, collect):
    # `</think>` is one special token: the bias makes the grammar pick it over the letters.
    (close,) = opener.tokenize("</think>", add_bos=False, special=True)
    fields = {"messages": ASK, "max_tokens": 20, "temperature": 0.0,
              "logit_bias": {close: 50.0},
              "extra": {"grammar": 'root ::= "the cat" "</think>" "yes"'}}
    _, deltas = collect(opener, **fields)
    assert split(deltas) == ("the cat", "yes")
    # the special token is text the client sees when the thinking stays inline
    _, inline = collect(opener, split_reasoning=False, **fields)
    assert split(inline) == ("", "the cat</think>yes")
    assert inline[-1].usage.completion_tokens == deltas[-1].usage.completion_tokens
    assert inline[-1].usage.completion_tokens <= len("the cat") + 1 + len("yes")


def test_json_output_is_not_thinking(opener, collect):
    # the prompt opens the tag, but a JSON answer has no room to think: it is all text
    text, deltas = collect(opener, messages=ASK, max_tokens=40, seed=1,
                           response_format=ResponseFormat(type="json_object"))
    assert split(deltas)[0] == ""
    assert text.startswith("{")
    if deltas[-1].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


class ThinkingRun:
    """Stands in for a generation whose deltas are already split."""

    finish = "stop"

    def __init__(self, deltas):
        self.deltas = deltas

    def __iter__(self):
        return iter(self.deltas)

    def final(self, finish=None):
        return Delta(finish_reason=finish or self.finish)


def test_reasoning_comes_before_an_auto_tool_call():
    from llama_api_llamacpp.tools import tool_deltas

    run = ThinkingRun([Delta(reasoning="the user wants "), Delta(reasoning="weather"),
                       Delta(text="<tool_call>"),
                       Delta(text='{"name": "get_weather", "arguments": {"city": "Paris"}}'),
                       Delta(text="</tool_call>")])
    deltas = list(tool_deltas(run, "auto", None, {"get_weather"}))
    assert split(deltas) == ("the user wants weather", "")
    assert [d.reasoning for d in deltas[:2]] == ["the user wants ", "weather"]
    (call,) = [c for d in deltas for c in (d.tool_calls or [])]
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert deltas[-1].finish_reason == "tool_calls"


# Qwen3's convention: `enable_thinking` false closes an empty thinking block up front.
SWITCH_TEMPLATE = THINK_OPEN_TEMPLATE.replace(
    "'<|assistant|><think>\\n'",
    "'<|assistant|><think>\\n' + ('\\n</think>\\n\\n' if enable_thinking is defined and "
    "enable_thinking is false else '')")


def test_thinking_off_reaches_a_template_that_can_turn_it_off(tmp_path, collect):
    write_tiny_gguf(tmp_path / "switch.gguf", chat_template=SWITCH_TEMPLATE,
                    special_tokens=THINK_TOKENS, seed=5)
    model = load(spec(tmp_path, "switch", n_parallel=1))
    try:
        assert model.prompts.render(ASK, think=False).text.endswith("</think>\n\n")
        assert model.prompts.render(ASK, think=True).text.endswith("<think>\n")
        assert model.prompts.render(ASK).text.endswith("<think>\n")  # the model's way
        answer = 'root ::= "yes cat"'
        _, on = collect(model, messages=ASK, max_tokens=8, extra={"grammar": answer})
        _, off = collect(model, messages=ASK, max_tokens=8, extra={"grammar": answer},
                         think=False)
        assert split(on) == ("yes cat", "")  # the prompt opened the thinking
        assert split(off) == ("", "yes cat")  # the thinking was closed: it's the answer
    finally:
        plugin.unload_model(model=model)


def test_a_model_that_does_not_think_takes_the_control_and_answers_alike(tiny_plain, collect):
    text, _ = collect(tiny_plain, messages=ASK, max_tokens=6, temperature=0.0)
    off, _ = collect(tiny_plain, messages=ASK, max_tokens=6, temperature=0.0, think=False)
    assert off == text


@pytest.mark.parametrize("options", [{}, {"n_parallel": 1}], ids=["default", "plain"])
def test_a_thinking_budget_closes_the_thinking_and_the_model_answers(think_dir, collect,
                                                                      options):
    model = load(spec(think_dir, "think-open", **options))
    try:
        (close,) = model.tokenize("</think>", add_bos=False, special=True)
        fields = {"messages": ASK, "max_tokens": 24, "temperature": 0.0,
                  "logit_bias": {close: -100.0}}  # it would never close the thinking itself
        _, unbounded = collect(model, **fields)
        assert split(unbounded)[1] == ""  # all thinking
        _, deltas = collect(model, thinking_budget=5, **fields)
        reasoning, answer = split(deltas)
        assert reasoning and answer
        thought = model.tokenize(reasoning, add_bos=False, special=False)
        assert len(thought) <= 6  # five tokens of thinking (a token may split in two)
        assert deltas[-1].usage.completion_tokens == 24  # the tag counts as generated
    finally:
        plugin.unload_model(model=model)
