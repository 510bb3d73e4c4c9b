"""The completions and chat completions endpoints: run the backend requests, shape the output."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import anyio
import msgspec
from litestar import Request, Response
from litestar.response import Stream

from llama_api import errors
from llama_api import openai_format as fmt
from llama_api.schemas import ChatCompletionRequest, CompletionRequest
from llama_api.types import Delta, GenerateRequest

log = logging.getLogger("llama_api.generation")

DONE = b"data: [DONE]\n\n"


def event(body: dict) -> bytes:
    return b"data: " + msgspec.json.encode(body) + b"\n\n"


def error_event(exc: errors.LlamaApiError) -> bytes:
    return event({"error": {"message": exc.message, "type": exc.type,
                            "param": exc.param, "code": exc.code}})


async def run(state, model: str, requests: list[GenerateRequest]) -> AsyncIterator[tuple[int, Delta]]:
    """Hold one slot of the model's worker and stream (choice index, delta) pairs."""
    spec = state.registry.resolve(model)
    async with state.scheduler.lease(spec) as worker:
        for index, request in enumerate(requests):
            async for delta in worker.generate(request):
                yield index, delta


async def collect(request: Request, deltas: AsyncIterator[tuple[int, Delta]],
                  count: int) -> list[fmt.Choice]:
    """Gather a whole answer; if the client hangs up first, stop generating."""
    choices = [fmt.Choice(i) for i in range(count)]

    async def gather() -> None:
        async for index, delta in deltas:
            choices[index].add(delta)

    await until_done_or_disconnected(request, gather)
    return choices


async def until_done_or_disconnected(request: Request, work) -> None:
    """Run `work()`; cancel it (and so the worker's generation) if the client goes away."""
    with errors.unwrapped():
        async with anyio.create_task_group() as task_group:

            async def watch() -> None:
                # The body has been read, so the next message can only be the disconnect.
                while (await request.receive())["type"] != "http.disconnect":
                    pass
                log.info("client went away: cancelling its request")
                task_group.cancel_scope.cancel()

            task_group.start_soon(watch)
            try:
                await work()
            finally:
                task_group.cancel_scope.cancel()


async def primed(request: Request, deltas: AsyncIterator[tuple[int, Delta]]):
    """Wait for the first delta before answering, so that load failures and bad prompts
    get a real HTTP status instead of an error inside a 200 stream. A client that hangs
    up meanwhile (queued, or waiting for a load) gives up its place."""
    first = None

    async def get_first() -> None:
        nonlocal first
        try:
            first = await deltas.__anext__()
        except StopAsyncIteration:
            pass

    await until_done_or_disconnected(request, get_first)
    return first


def sse(events: AsyncIterator[bytes]) -> Stream:
    return Stream(events, media_type="text/event-stream",
                  headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def json_response(body: dict) -> Response:
    return Response(msgspec.json.encode(body), media_type="application/json")


async def stream_events(first, deltas, render, finish) -> AsyncIterator[bytes]:
    """Render each delta as SSE; an error mid-stream becomes an error event, then the end."""
    try:
        if first is not None:
            for chunk in render(*first):
                yield chunk
            async for index, delta in deltas:
                for chunk in render(index, delta):
                    yield chunk
        for chunk in finish():
            yield chunk
        yield DONE
    except errors.LlamaApiError as exc:
        log.warning("stream failed: %s", exc.message)
        yield error_event(exc)
    finally:
        await deltas.aclose()


def close_unfinished(choices: list[fmt.Choice], render):
    """Every choice ends with a finish_reason chunk, even if the backend sent none
    (clients such as LangChain fail on a stream without one)."""
    for choice in choices:
        if choice.finish_reason is None:
            yield from render(choice.index, Delta(finish_reason="stop"))


async def chat_completion(request: Request, body: ChatCompletionRequest) -> Response | Stream:
    state = request.app.state
    requests = fmt.chat_requests(body)
    state.registry.resolve(body.model)  # 404 before any work
    response_id = fmt.new_id("chatcmpl")
    deltas = run(state, body.model, requests)
    if not body.stream:
        choices = await collect(request, deltas, len(requests))
        usage = fmt.total_usage(choices, prompts=1)
        return json_response(fmt.chat_response(response_id, body.model, choices, usage))

    first = await primed(request, deltas)
    created = int(time.time())
    choices = [fmt.Choice(i) for i in range(len(requests))]
    started: set[int] = set()

    def render(index: int, delta: Delta):
        choices[index].add(delta)
        if index not in started:
            started.add(index)
            yield event(fmt.chat_chunk(response_id, body.model, created, index, None, first=True))
        yield event(fmt.chat_chunk(response_id, body.model, created, index, delta))

    def finish():
        yield from close_unfinished(choices, render)
        if body.stream_options and body.stream_options.include_usage:
            usage = fmt.total_usage(choices, prompts=1)
            yield event(fmt.usage_chunk(response_id, body.model, created,
                                        "chat.completion.chunk", usage))

    return sse(stream_events(first, deltas, render, finish))


async def completion(request: Request, body: CompletionRequest) -> Response | Stream:
    state = request.app.state
    requests = fmt.completion_requests(body)
    state.registry.resolve(body.model)
    prompts = len(requests) // (body.n or 1)
    response_id = fmt.new_id("cmpl")
    deltas = run(state, body.model, requests)
    if not body.stream:
        choices = await collect(request, deltas, len(requests))
        usage = fmt.total_usage(choices, prompts=prompts)
        return json_response(fmt.completion_response(response_id, body.model, choices, usage))

    first = await primed(request, deltas)
    created = int(time.time())
    choices = [fmt.Choice(i) for i in range(len(requests))]
    offsets = [0] * len(requests)

    def render(index: int, delta: Delta):
        choices[index].add(delta)
        yield event(fmt.completion_chunk(response_id, body.model, created, index, delta,
                                         offsets[index]))
        offsets[index] += len(delta.text)

    def finish():
        yield from close_unfinished(choices, render)
        if body.stream_options and body.stream_options.include_usage:
            usage = fmt.total_usage(choices, prompts=prompts)
            yield event(fmt.usage_chunk(response_id, body.model, created, "text_completion", usage))

    return sse(stream_events(first, deltas, render, finish))
