"""What every OpenAI resource shares: sampling fields, usage, the whole response's envelope
and the chunk stream's frame."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from llama_api.api.choices import Choice, total_usage
from llama_api.api.schemas.openai import SamplingFields
from llama_api.api.streaming import Event
from llama_api.contract.records import EXTRA_SAMPLING_FIELDS, Usage

DONE = Event("[DONE]")


def think_for(effort: str | None) -> bool | None:
    """An OpenAI reasoning effort as `GenerateRequest.think`: "none" turns thinking off, any
    other effort leaves it on; none given, the model thinks its own way."""
    return None if effort is None else effort != "none"


def sampling_fields(body: SamplingFields) -> dict[str, Any]:
    """The fields completions and chat share, as GenerateRequest keyword arguments.

    Their types and ranges were checked when the body was decoded (see `schemas`)."""
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    extra = {name: getattr(body, name) for name in EXTRA_SAMPLING_FIELDS
             if getattr(body, name) is not None}
    return {
        "max_tokens": body.max_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "min_p": body.min_p,
        "repeat_penalty": body.repeat_penalty,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
        "stop": [s for s in stop if s],
        "seed": body.seed,
        "logit_bias": body.logit_bias or None,
        "extra": extra,
    }


def vary_seed(seed: int | None, choice: int) -> int | None:
    """Choices of one request differ even with a fixed seed, and stay reproducible."""
    return None if seed is None else seed + choice


def usage_dict(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def openai_response(object_: str, response_id: str, model: str, choices: list[Choice],
                    usage: Usage, choice_fields: Callable[[Choice], dict[str, Any]]) -> dict:
    """A whole completion or chat completion: the envelope around each choice's fields."""
    return {
        "id": response_id,
        "object": object_,
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": c.index, **choice_fields(c),
                     "finish_reason": c.finish_reason or "stop"} for c in choices],
        "usage": usage_dict(usage),
    }


class OpenAIChunks:
    """The frame of OpenAI's chunk streams: `data:` events with the response's id, model and
    time, a usage chunk when the client asked for one, then `[DONE]`. Subclasses say how a
    delta looks (`delta`) and name the chunk object."""

    object = ""

    def __init__(self, response_id: str, model: str, prompts: int, include_usage: bool):
        self.response_id = response_id
        self.model = model
        self.prompts = prompts
        self.include_usage = include_usage
        self.created = int(time.time())

    def chunk(self, choices: list[dict[str, Any]], **fields: Any) -> Event:
        return Event({"id": self.response_id, "object": self.object, "created": self.created,
                      "model": self.model, "choices": choices, **fields})

    def start(self) -> list[Event]:
        return []

    def finish(self, choices: list[Choice]) -> list[Event]:
        events = []
        if self.include_usage:
            usage = total_usage(choices, prompts=self.prompts)
            events.append(self.chunk([], usage=usage_dict(usage)))
        events.append(DONE)
        return events
