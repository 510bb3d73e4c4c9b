"""Reasoning: the thinking/answer split gives the same result for every way a text is cut into
pieces, and chat completions return the thinking apart from the answer (`reasoning_content`),
plain and streamed, unless `reasoning_format` is none."""

from __future__ import annotations

import itertools

import pytest

from llama_api.text.reasoning import ReasoningSplitter, ReasoningTags


def split(pieces: list[str], **kwargs) -> tuple[str, str]:
    splitter = ReasoningSplitter(**kwargs)
    reasoning = answer = ""
    for piece in pieces:
        r, a = splitter.feed(piece)
        reasoning, answer = reasoning + r, answer + a
    r, a = splitter.flush()
    return reasoning + r, answer + a


def every_cut(text: str, most: int = 3):
    """Every way to cut `text` into at most `most + 1` pieces."""
    for count in range(most + 1):
        for cuts in itertools.combinations(range(1, len(text)), count):
            bounds = (0, *cuts, len(text))
            yield [text[a:b] for a, b in itertools.pairwise(bounds)]


CASES = [
    ("<think>\nweigh it\n</think>\n\nThe answer is 4.", {}, ("weigh it\n", "The answer is 4.")),
    ("\nweigh it</think>\n\n4", {"inside": True}, ("weigh it", "4")),
    ("Plain answer, no thinking.", {}, ("", "Plain answer, no thinking.")),
    ("Answer first <think>x</think>", {}, ("", "Answer first <think>x</think>")),
    ("  \n<think>a</think>b", {}, ("a", "b")),
    ("<think>cut off mid-thought", {}, ("cut off mid-thought", "")),
    ("<thi", {}, ("", "<thi")),
    ("[[a]]b", {"tags": ReasoningTags("[[", "]]")}, ("a", "b")),
]


@pytest.mark.parametrize(("text", "kwargs", "expected"), CASES)
def test_every_cut_of_the_text_splits_the_same(text, kwargs, expected):
    for pieces in every_cut(text):
        assert split(pieces, **kwargs) == expected, pieces


def test_no_part_of_a_tag_is_emitted_before_it_is_decided():
    splitter = ReasoningSplitter()
    assert splitter.feed("<thi") == ("", "")
    assert splitter.feed("nk>idea</th") == ("idea", "")
    assert splitter.feed("ink>done") == ("", "done")


# -- over HTTP: chat completions -----------------------------------------------------------

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
