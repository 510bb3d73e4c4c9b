"""A loaded model and one request's life: prompt -> job -> driver -> Deltas (library-independent).

The library adapters (`exl2.py`, `exl3.py`) supply an object with:

- `generator`: what `Engine` drives (enqueue / iterate / cancel),
- `make_job(input_ids, max_new_tokens, sampling, stop_token_ids, identifier)`,
- `unload()`, and `info` (a dict).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from llama_api import errors
from llama_api.contract.records import Delta, GenerateRequest, Usage
from llama_api.text.stops import StopHoldback
from llama_api_exllama.engine import CANCELLED, Engine, Failure
from llama_api_exllama.prompt import PromptBuilder

log = logging.getLogger(__name__)

# How often a request thread waiting on its queue looks at its cancelled event.
CANCEL_POLL = 0.1


@dataclass
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    logit_bias: dict[int, float] | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def sampling_defaults(generation_config: dict[str, Any] | None) -> Sampling:
    """The model's own defaults (generation_config.json) when it samples; else plain sampling."""
    config = generation_config or {}
    base = Sampling()
    if config.get("do_sample") is True:
        for key, attr in (
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("top_k", "top_k"),
            ("min_p", "min_p"),
            ("repetition_penalty", "repetition_penalty"),
        ):
            value = config.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(base, attr, type(getattr(base, attr))(value))
    return base


def sampling_from_request(
    request: GenerateRequest, defaults: Sampling, vocab_size: int
) -> Sampling:
    """The request's sampling over the model's defaults.

    The core has range-checked every field and made logit_bias keys token ids; only the
    vocabulary is this model's to check.
    """
    s = Sampling(**vars(defaults))
    for field, attr in (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("min_p", "min_p"),
        ("repeat_penalty", "repetition_penalty"),
        ("presence_penalty", "presence_penalty"),
        ("frequency_penalty", "frequency_penalty"),
        ("seed", "seed"),
    ):
        value = getattr(request, field)
        if value is not None:
            setattr(s, attr, value)
    if request.logit_bias:
        outside = [token for token in request.logit_bias if token >= vocab_size]
        if outside:
            raise errors.BadRequest(
                f"logit_bias token {outside[0]} is out of range: this model's vocabulary "
                f"has {vocab_size} tokens",
                param="logit_bias",
            )
        s.logit_bias = dict(request.logit_bias)
    return s


def _count(value) -> int:
    if value is None:
        return 0
    shape = getattr(value, "shape", None)
    if shape is not None:
        return int(shape[-1]) if len(shape) else 1
    return len(value)


def finish_reason(eos_reason: str | None) -> str:
    return "length" if eos_reason == "max_new_tokens" else "stop"


class ExllamaModel:
    """What `load_model` returns: the adapter, its driver, the prompt builder, the limits."""

    def __init__(
        self,
        adapter,
        prompt: PromptBuilder,
        max_seq_len: int,
        slots: int,
        backend: str,
        info: dict[str, Any] | None = None,
    ):
        self.adapter = adapter
        self.prompt = prompt
        self.max_seq_len = max_seq_len
        self.slots = slots
        self.backend = backend
        self.info = dict(info or {})
        self.engine = Engine(adapter.generator, name=f"{backend}-driver")
        self.defaults = sampling_defaults(prompt.generation_defaults)
        self._keys = itertools.count(1)
        self._unloaded = False

    # generate ---------------------------------------------------------------------------

    def prompt_ids(self, request: GenerateRequest) -> list[int]:
        if request.messages is not None:
            return self.prompt.chat_ids(request.messages)
        return self.prompt.completion_ids(request.prompt, request.parse_special)

    def check_request(self, request: GenerateRequest) -> None:
        # tool_choice "none" asks for no tool call: the tools can be left out of the prompt.
        if request.tools and request.tool_choice != "none":
            raise errors.NotSupported(
                "tools are not supported by the exllama backend", param="tools"
            )
        if request.logprobs is not None:
            raise errors.NotSupported(
                "logprobs are not supported by the exllama backend", param="logprobs"
            )
        if request.response_format is not None:
            raise errors.NotSupported(
                f"response_format {request.response_format.type!r} is not supported by the "
                "exllama backend",
                param="response_format",
            )
        if request.echo:
            raise errors.NotSupported("echo is not supported by the exllama backend", param="echo")

    def generate(
        self, request: GenerateRequest, cancelled: threading.Event | None = None
    ) -> Iterator[Delta]:
        """Checks the request now (errors raise before streaming), then returns the delta stream."""
        if self._unloaded:
            raise errors.BackendUnavailable("the model was unloaded")
        self.check_request(request)
        ids = self.prompt_ids(request)
        if not ids:
            raise errors.BadRequest("the prompt is empty", param="prompt")
        room = self.max_seq_len - len(ids)
        if room < 1:
            raise errors.ContextLengthExceeded(
                f"the prompt has {len(ids)} tokens; this model's context is "
                f"{self.max_seq_len} tokens",
                param="messages" if request.messages is not None else "prompt",
            )
        max_new = room if request.max_tokens is None else min(request.max_tokens, room)
        sampling = sampling_from_request(request, self.defaults, self.prompt.vocab_size)
        key = next(self._keys)
        try:
            job = self.adapter.make_job(ids, max_new, sampling, self.prompt.stop_token_ids, key)
        except errors.LlamaApiError:
            raise
        except Exception as exc:
            raise errors.BadRequest(f"exllama rejected the request: {exc}") from exc
        return self._stream(job, key, len(ids), request.stop or [], cancelled)

    def _stream(
        self, job, key, prompt_tokens: int, stops: list[str], cancelled: threading.Event | None
    ) -> Iterator[Delta]:
        stream = self.engine.submit(job, key, cancelled)
        holdback = StopHoldback(stops)
        seen_tokens = 0
        done = False
        try:
            while True:
                try:
                    item = stream.queue.get(timeout=CANCEL_POLL)
                except queue.Empty:
                    if cancelled is not None and cancelled.is_set():
                        return  # the finally tells the driver
                    continue
                if item is CANCELLED:
                    done = True
                    return
                if isinstance(item, Failure):
                    done = True
                    raise translate_failure(item.error)
                seen_tokens += _count(item.get("token_ids"))
                text = holdback.feed(item.get("text") or "")
                if holdback.stopped:
                    usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=seen_tokens)
                    if item.get("eos"):
                        done = True
                    yield Delta(text=text, finish_reason="stop", stop_sequence=holdback.matched,
                                usage=usage)
                    return
                if item.get("eos"):
                    done = True
                    text += holdback.flush()
                    new_tokens = item.get("new_tokens")
                    completion = int(new_tokens) if isinstance(new_tokens, int) else seen_tokens
                    yield Delta(
                        text=text,
                        finish_reason=finish_reason(item.get("eos_reason")),
                        usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion),
                    )
                    return
                if text:
                    yield Delta(text=text)
        finally:
            if not done:
                self.engine.cancel(key)

    # unload -----------------------------------------------------------------------------

    def unload(self) -> None:
        if self._unloaded:
            return
        self._unloaded = True
        self.engine.close()
        self.adapter.unload()


def translate_failure(exc: BaseException) -> errors.LlamaApiError:
    if isinstance(exc, errors.LlamaApiError):
        return exc
    if isinstance(exc, (AssertionError, ValueError)):
        return errors.BadRequest(f"exllama rejected the request: {exc}")
    return errors.LlamaApiError(f"exllama generation failed: {type(exc).__name__}: {exc}")
