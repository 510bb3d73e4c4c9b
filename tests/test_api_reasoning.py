"""Thinking comes back split from the answer in chat completions, plain and streamed."""

from __future__ import annotations

import httpx

THINKING = [{"role": "user", "content": "<think> weigh options </think> forty two"}]


def test_reasoning_content_is_split_from_the_answer(api):
    reply = api.chat.completions.create(model="fast", messages=THINKING, max_tokens=6)
    message = reply.choices[0].message.model_dump()
    assert message["reasoning_content"] == " weigh options "
    assert message["content"] == " forty two"


def test_streamed_reasoning_arrives_before_the_answer_and_never_in_content(api):
    stream = api.chat.completions.create(model="slow", messages=THINKING, max_tokens=6,
                                         stream=True)
    reasoning, content, order = "", "", []
    for chunk in stream:
        delta = chunk.choices[0].delta.model_dump() if chunk.choices else {}
        if delta.get("reasoning_content"):
            reasoning += delta["reasoning_content"]
            order.append("reasoning")
        if delta.get("content"):
            content += delta["content"]
            order.append("content")
    assert (reasoning, content) == (" weigh options ", " forty two")
    assert "<think>" not in content and "</think>" not in content
    assert order.index("content") > max(i for i, kind in enumerate(order) if kind == "reasoning")


def test_reasoning_format_none_keeps_the_thinking_inline(api):
    reply = api.chat.completions.create(model="fast", messages=THINKING, max_tokens=6,
                                        extra_body={"reasoning_format": "none"})
    message = reply.choices[0].message.model_dump()
    assert message["content"] == "<think> weigh options </think> forty two"
    assert not message.get("reasoning_content")


def test_fill_in_the_middle_on_a_model_without_fim_tokens_is_a_400_naming_it(client):
    reply = client.post(client.v1 + "/completions",
                        json={"model": "fast", "prompt": "def f(", "suffix": "return x"})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == "suffix" and "fast" in error["message"]
    assert isinstance(reply, httpx.Response)
