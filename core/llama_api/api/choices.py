"""Run the choices of one request on the model's slots, and gather what each produces.

No HTTP here: `generate_choices` feeds (choice index, delta) pairs to a callback; the
plain and the streaming paths (`routes.generation`) decide what to do with them.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec

from llama_api import errors
from llama_api.contract.records import Delta, GenerateRequest, ModelSpec, TokenLogprob, Usage
from llama_api.scheduling.scheduler import Scheduler

Emit = Callable[[int, Delta], Awaitable[None]]


def new_id(prefix: str, sep: str = "-") -> str:
    """A response or call id: `chatcmpl-...` (OpenAI), `msg_...` with `sep="_"` (Anthropic)."""
    return f"{prefix}{sep}{uuid.uuid4().hex[:24]}"


async def generate_choices(scheduler: Scheduler, spec: ModelSpec,
                           requests: list[GenerateRequest], emit: Emit) -> None:
    """Generate every choice, at once on up to as many slots as the model has.

    The first lease loads the model and says how many slots it has; up to
    min(choices, slots) - 1 more leases then queue FIFO like any request. Each lease takes
    the next choice nobody started, so a choice starts as soon as one of them is free.
    Leases still queued when every choice has started are given up. A model's `max_tokens`
    caps each choice's (and is the default where the request names none).
    """
    if spec.max_tokens is not None:
        requests = [msgspec.structs.replace(request, max_tokens=min(
            request.max_tokens or spec.max_tokens, spec.max_tokens)) for request in requests]
    pending = deque(enumerate(requests))
    queued: set[anyio.CancelScope] = set()

    async def serve(worker) -> None:
        while pending:
            index, request = pending.popleft()
            if not pending:
                for scope in queued:
                    scope.cancel()
            async for delta in worker.generate(request):
                await emit(index, delta)

    async def another_lease() -> None:
        with anyio.CancelScope() as scope:
            queued.add(scope)
            try:
                async with scheduler.lease(spec) as worker:
                    queued.discard(scope)
                    await serve(worker)
            except errors.Overloaded:
                pass  # the queue is full: the other leases serve these choices
            finally:
                queued.discard(scope)

    async with scheduler.lease(spec) as worker:
        if len(requests) == 1 or worker.slots == 1:  # no other lease: no task group to run
            await serve(worker)
            return
        with errors.unwrapped():
            async with anyio.create_task_group() as task_group:
                for _ in range(min(len(requests), worker.slots) - 1):
                    task_group.start_soon(another_lease)
                await serve(worker)


class Choice:
    """What one choice has produced so far."""

    def __init__(self, index: int):
        self.index = index
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.logprobs: list[TokenLogprob] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.stop_sequence: str | None = None
        self.usage = Usage()

    def add(self, delta: Delta) -> None:
        self.text.append(delta.text)
        if delta.reasoning:
            self.reasoning.append(delta.reasoning)
        if delta.logprobs:
            self.logprobs.extend(delta.logprobs)
        for call in delta.tool_calls or []:
            merged = self.tool_calls.setdefault(call.index, {
                "id": call.id or new_id("call"), "type": "function",
                "function": {"name": "", "arguments": ""},
            })
            if call.id:
                merged["id"] = call.id
            if call.name:
                merged["function"]["name"] += call.name
            merged["function"]["arguments"] += call.arguments
        if delta.finish_reason:
            self.finish_reason = delta.finish_reason
        if delta.stop_sequence:
            self.stop_sequence = delta.stop_sequence
        if delta.usage is not None:
            self.usage = delta.usage


def total_usage(choices: list[Choice], prompts: int) -> Usage:
    """Prompt tokens count once per prompt, completion tokens once per choice."""
    per_prompt = max(1, len(choices) // max(1, prompts))
    return Usage(
        prompt_tokens=sum(c.usage.prompt_tokens for c in choices[::per_prompt]),
        completion_tokens=sum(c.usage.completion_tokens for c in choices),
    )
