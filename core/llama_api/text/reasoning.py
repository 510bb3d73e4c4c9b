"""Thinking split from the answer, for models that think in tags (`<think>...</think>`).

A backend that knows its model's tags feeds each piece of generated text through a
`ReasoningSplitter` and sends what comes out as `Delta(reasoning=..., text=...)`. A tag
cut between two pieces is held back until the next piece decides it, so no part of a
tag ever leaks into either field.
"""

from __future__ import annotations

from dataclasses import dataclass

from llama_api.text.stops import StopHoldback


@dataclass(frozen=True)
class ReasoningTags:
    open: str = "<think>"
    close: str = "</think>"


# The tags of the model families that think in the open (Qwen3, DeepSeek-R1, SmolLM3, ...).
THINK = ReasoningTags()


class ReasoningSplitter:
    """Feed text pieces; get (reasoning, answer) pairs that are safe to emit now.

    `inside=True` when the prompt itself opened the tag (templates whose generation
    prompt ends with `<think>`). Only a leading thinking block is split out: a tag
    after the answer has begun is answer text.
    """

    def __init__(self, tags: ReasoningTags = THINK, inside: bool = False):
        self.tags = tags
        self.state = "inside" if inside else "start"  # start -> inside -> answer
        self._watch = StopHoldback([tags.close if inside else tags.open])
        self._lead = ""  # whitespace that may precede an opening tag
        self._trim = inside  # drop the newlines that follow a tag

    def feed(self, text: str) -> tuple[str, str]:
        reasoning, answer = "", ""
        while text:
            if self.state == "answer":
                answer += self._trimmed(text)
                break
            safe = self._watch.feed(text)
            text = ""
            if self.state == "inside":
                reasoning += self._trimmed(safe)
                if self._watch.stopped:
                    self.state, self._trim = "answer", True
                    text = self._watch.rest
            elif self._watch.stopped:
                before, self._lead, text = self._lead + safe, "", self._watch.rest
                if before.strip():  # answer text came first: the tag is part of the answer
                    self.state = "answer"
                    answer += before + self.tags.open
                else:
                    self.state, self._trim = "inside", True
                    self._watch = StopHoldback([self.tags.close])
            elif (self._lead + safe).strip():
                self.state = "answer"
                answer += self._lead + safe + self._watch.flush()
                self._lead = ""
            else:
                self._lead += safe
        return reasoning, answer

    def _trimmed(self, text: str) -> str:
        if self._trim:
            text = text.lstrip("\n")
            self._trim = not text
        return text

    def flush(self) -> tuple[str, str]:
        """What is still held, at the end of generation."""
        held = self._watch.flush()
        if self.state == "inside":
            return self._trimmed(held), ""
        held, self._lead = self._lead + held, ""
        return "", held
