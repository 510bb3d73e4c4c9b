"""The HTTP routes: each decodes its body, asks its resource module, and answers.

A generating route hands `generation` its normalized requests, how to build the whole
answer, and a stream renderer; `generation` picks the plain or the streamed path. What the
routes share comes as the `server` dependency (`state.ServerState`). The request's
metrics record (`metrics.request_record`) is filled in here: the model once found, the
tokens as the deltas or results come back.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Annotated, Literal, TypeVar

from litestar import Controller, Request, Response, delete, get, post, route
from litestar.params import Body, FromPath, FromQuery, QueryParameter

from llama_api.api import (
    anthropic,
    chat,
    completions,
    embeddings,
    images,
    models,
    openapi,
    responses,
)
from llama_api.api import rerank as reranking
from llama_api.api import tokenize as tokenizing
from llama_api.api.choices import Choice, Emit, generate_choices, new_id, total_usage
from llama_api.api.error_responses import RESPONSES_ERRORS, error_shape
from llama_api.api.http import (
    GET_OR_HEAD,
    json_response,
    request_key,
    until_done_or_disconnected,
)
from llama_api.api.metrics import request_record
from llama_api.api.schemas.anthropic import MessagesInput, MessagesRequest
from llama_api.api.schemas.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from llama_api.api.schemas.responses import MAX_INPUT_ITEMS_PAGE, ResponseRequest
from llama_api.api.schemas.tokens import DetokenizeBody, RerankBody, TokenizeBody
from llama_api.api.state import Server, ServerState
from llama_api.api.streaming import ErrorShape, EventStream, StreamRenderer
from llama_api.contract.records import Delta, GenerateRequest

T = TypeVar("T")

# What /schema says each kind of route answers besides its 200 (see `openapi`).
MODEL_ERRORS = openapi.errors(*openapi.MODEL_REQUEST)
ANTHROPIC_ERRORS = openapi.errors(*openapi.MODEL_REQUEST, shape=openapi.ANTHROPIC)
STREAMS = openapi.JSONOrStream  # `stream: true` answers server-sent events
# A stored response: its id in the path (and paging in the query), 404 when it is not kept.
STORED_ERRORS = openapi.errors(400, 401, 404)


async def generation(request: Request, server: ServerState, model: str,
                     requests: list[GenerateRequest], *,
                     stream: bool, answer: Callable[[list[Choice]], dict | Awaitable[dict]],
                     renderer: StreamRenderer, render_plain: bool = False,
                     errors: ErrorShape | None = None) -> Response:
    """Run the choices; answer with one JSON body (`answer`) or a stream (`renderer`).

    `render_plain`: the plain answer is read from the renderer's state (Responses), so the
    renderer sees the deltas there too. `errors`: the stream's error shape, when the
    route's API isn't enough to tell it (Responses fails with its own event)."""
    spec = await server.registry.find(model)  # 404 before any work
    record = request_record(request)
    record.model = spec.id
    for each in requests:  # the choices share one image list: read once
        await images.prepare(each, spec, server.images)

    async def run(emit: Emit) -> None:
        async def counted(index: int, delta: Delta) -> None:
            # Both paths pass here: tokens and their timing are counted as the worker sends
            # them (the /metrics counters and the request's log line).
            record.delta(delta)
            await emit(index, delta)

        await generate_choices(server.scheduler, spec, requests, counted)

    if stream:
        return EventStream(run, len(requests), renderer, errors or error_shape(request),
                           keepalive=server.keepalive)
    choices = [Choice(i) for i in range(len(requests))]

    async def collect(index: int, delta: Delta) -> None:
        choices[index].add(delta)
        if render_plain:
            for _ in renderer.delta(index, delta):
                pass

    await until_done_or_disconnected(request, partial(run, collect))
    body = answer(choices)
    return json_response(await body if inspect.isawaitable(body) else body)


async def on_worker(request: Request, server: ServerState, model: str,
                    call: Callable[[object], Awaitable[T]], with_images=None) -> T:
    """`await call(worker)` on a leased worker for `model` (a non-generating request);
    `with_images`: the request whose images are read first (TokenizeRequest)."""
    spec = await server.registry.find(model)  # 404 before any work
    request_record(request).model = spec.id
    if with_images is not None:
        await images.prepare(with_images, spec, server.images)

    async def work():  # a client that hangs up while queued gives up its place
        async with server.scheduler.lease(spec) as worker:
            return await call(worker)

    return await until_done_or_disconnected(request, work)


def include_usage(body) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


class OpenAIController(Controller):
    path = "/v1"

    @route("/models", http_method=GET_OR_HEAD, responses=openapi.errors(*openapi.GUARDED),
           summary="List every model this server can serve")
    async def list_models(self, server: Server) -> Response:
        return json_response(models.model_list(await server.registry.current(), server.scheduler))

    @get("/models/{model_id:path}", responses=openapi.errors(400, 401, 404),
         summary="Describe one model")
    async def get_model(self, server: Server, model_id: FromPath[str]) -> Response:
        spec = await server.registry.find(model_id.lstrip("/"))
        return json_response(models.model_card(spec, server.scheduler.loaded().get(spec.id)))

    @post("/completions", status_code=200, responses=MODEL_ERRORS, operation_class=STREAMS,
          summary="Text completion (OpenAI legacy API)")
    async def completions(self, request: Request, server: Server,
                          data: Annotated[CompletionRequest, Body()]) -> Response:
        requests = completions.completion_requests(data)
        prompts = len(requests) // (data.n or 1)
        response_id = new_id("cmpl")
        return await generation(
            request, server, data.model, requests, stream=bool(data.stream),
            answer=lambda choices: completions.completion_response(
                response_id, data.model, choices, total_usage(choices, prompts)),
            renderer=completions.CompletionChunks(response_id, data.model, prompts,
                                                  include_usage(data), choices=len(requests)))

    @post("/chat/completions", status_code=200, responses=MODEL_ERRORS, operation_class=STREAMS,
          summary="Chat completion")
    async def chat_completions(self, request: Request, server: Server,
                               data: Annotated[ChatCompletionRequest, Body()]) -> Response:
        requests = chat.chat_requests(data)
        response_id = new_id("chatcmpl")
        return await generation(
            request, server, data.model, requests, stream=bool(data.stream),
            answer=lambda choices: chat.chat_response(
                response_id, data.model, choices, total_usage(choices, prompts=1)),
            renderer=chat.ChatChunks(response_id, data.model, 1, include_usage(data)))

    @post("/embeddings", status_code=200, responses=MODEL_ERRORS,
          summary="Embeddings of texts or token lists")
    async def embeddings(self, request: Request, server: Server,
                         data: Annotated[EmbeddingRequest, Body()]) -> Response:
        embed_request = embeddings.embed_request(data)
        result = await on_worker(request, server, data.model,
                                 lambda worker: worker.embed(embed_request))
        request_record(request).prompt_tokens += result.prompt_tokens  # the texts read
        return json_response(embeddings.embeddings_response(data, result))


class AnthropicController(Controller):
    path = "/v1"

    @post("/messages", status_code=200, opt=anthropic.ROUTE_OPT, responses=ANTHROPIC_ERRORS,
          operation_class=STREAMS,
          summary="Create a message (Anthropic Messages API)")
    async def messages(self, request: Request, server: Server,
                       data: Annotated[MessagesRequest, Body()]) -> Response:
        message_id = new_id("msg", sep="_")
        return await generation(
            request, server, data.model, [anthropic.message_request(data)],
            stream=bool(data.stream),
            answer=lambda choices: anthropic.message_response(message_id, data.model, choices[0]),
            renderer=anthropic.MessageEvents(message_id, data.model))

    @post("/messages/count_tokens", status_code=200, opt=anthropic.ROUTE_OPT,
          responses=ANTHROPIC_ERRORS,
          summary="Count a message request's input tokens (Anthropic Messages API)")
    async def count_tokens(self, request: Request, server: Server,
                           data: Annotated[MessagesInput, Body()]) -> Response:
        tokenize_request = anthropic.count_tokens_request(data)
        result = await on_worker(request, server, data.model,
                                 lambda worker: worker.tokenize(tokenize_request),
                                 with_images=tokenize_request)
        return json_response(anthropic.count_tokens_response(result))


class ResponsesController(Controller):
    path = "/v1/responses"

    @post("", status_code=200, responses=MODEL_ERRORS, operation_class=STREAMS,
          opt={"error_shape": RESPONSES_ERRORS},
          summary="Create a model response (OpenAI Responses API)")
    async def create(self, request: Request, server: Server,
                     data: Annotated[ResponseRequest, Body()]) -> Response:
        requests, events, answer = await responses.prepare(server.responses, data,
                                                           request_key(request))
        return await generation(
            request, server, data.model, requests, stream=bool(data.stream), renderer=events,
            render_plain=True, errors=responses.ResponseErrors(events), answer=answer)

    @get("/{response_id:str}", responses=STORED_ERRORS, summary="A stored response")
    async def retrieve(self, request: Request, server: Server,
                       response_id: FromPath[str]) -> Response:
        return json_response(await server.responses.get(response_id, request_key(request)))

    @get("/{response_id:str}/input_items", responses=STORED_ERRORS,
         summary="The input items of a stored response")
    async def input_items(
        self, request: Request, server: Server, response_id: FromPath[str],
        order: FromQuery[Literal["asc", "desc"]] = "desc",
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_INPUT_ITEMS_PAGE)] = 20,
        after: FromQuery[str | None] = None,
    ) -> Response:
        items = await server.responses.input_items(response_id, request_key(request))
        return json_response(responses.input_items_page(items, order=order, limit=limit,
                                                        after=after))

    @delete("/{response_id:str}", status_code=200, responses=STORED_ERRORS,
            summary="Delete a stored response")
    async def delete(self, request: Request, server: Server,
                     response_id: FromPath[str]) -> Response:
        await server.responses.delete(response_id, request_key(request))
        return json_response({"id": response_id, "object": "response", "deleted": True})


@post(["/tokenize", "/v1/tokenize"], status_code=200, responses=MODEL_ERRORS,
      summary="Token ids of a text or of chat messages, as the model reads them")
async def tokenize(request: Request, server: Server,
                   data: Annotated[TokenizeBody, Body()]) -> Response:
    tokenize_request = tokenizing.tokenize_request(data)
    result = await on_worker(request, server, data.model,
                             lambda worker: worker.tokenize(tokenize_request),
                             with_images=tokenize_request)
    return json_response(tokenizing.tokenize_response(tokenize_request, result))


@post(["/detokenize", "/v1/detokenize"], status_code=200, responses=MODEL_ERRORS,
      summary="The text token ids spell")
async def detokenize(request: Request, server: Server,
                     data: Annotated[DetokenizeBody, Body()]) -> Response:
    text = await on_worker(request, server, data.model,
                           lambda worker: worker.detokenize(data.tokens))
    return json_response(tokenizing.detokenize_response(text))


@post(["/v1/rerank", "/rerank"], status_code=200, responses=MODEL_ERRORS,
      summary="Documents scored and sorted by relevance to a query (Jina/Cohere rerank)")
async def rerank(request: Request, server: Server,
                 data: Annotated[RerankBody, Body()]) -> Response:
    rerank_request = reranking.rerank_request(data)
    result = await on_worker(request, server, data.model,
                             lambda worker: worker.rerank(rerank_request))
    return json_response(reranking.rerank_response(data, rerank_request, result))


@route("/health", http_method=GET_OR_HEAD, opt={"public": True},
       summary="Liveness, and which models are loaded")
async def health(server: Server) -> dict:
    return models.health(server.scheduler, server.plugins)


# `/` (the JSON index, or the web page) is api/web.py's.
ROUTES = [OpenAIController, AnthropicController, ResponsesController, tokenize, detokenize,
          rerank, health]
