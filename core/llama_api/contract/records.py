"""Plain data passed between the core and its backends (and over the worker pipe)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import msgspec


class BackendInfo(msgspec.Struct, kw_only=True):
    """A backend a plugin provides."""

    name: str
    description: str = ""


class ModelSpec(msgspec.Struct, kw_only=True):
    """One servable model: what to load, with which backend, and how to serve it."""

    id: str
    backend: str
    path: str = ""
    aliases: list[str] = []
    # Backend load options (n_ctx, n_gpu_layers, pooling, ...), passed through unchanged.
    options: dict[str, Any] = {}
    # Serving options; None means "use the server default".
    idle_timeout: float | None = None
    slots: int | None = None
    # The most tokens any answer may have, and the default when a request names none (as
    # llama-server's --n-predict): a client asking for 32,000 gets this many.
    max_tokens: int | None = None
    # Where it may run on a Ray cluster (`serve --ray`; ignored otherwise): GPUs and custom
    # resources its worker needs from a node, or one node by name or id.
    num_gpus: float = 0
    resources: dict[str, float] = {}
    node: str = ""
    # Workers that serve it at once, each loaded on demand (llama_api.scheduling.replicas).
    replicas: int = 1
    # What discovery learned about the model (architecture, context length, ...).
    # `capabilities` (a list of strings, contract 1.1): "vision" for a model that takes
    # images; the core sends images to no other model, and shows the list in /v1/models.
    meta: dict[str, Any] = {}
    # The entry point name of the plugin that serves it (filled by the core).
    plugin: str = ""


class LoadedModel(msgspec.Struct, kw_only=True):
    """What `load_model` returns: the backend's own model object and what the core learns
    about it. Everything the core knows of a loaded model comes through here."""

    # The backend's object; every per-model hook (generate, embed, ...) gets it back.
    model: Any
    # How many requests it runs at once (the core queues the rest).
    slots: int = 1
    # Shown in `/v1/models` under the worker. The core reads it at load and again after
    # each request, so a backend may update the dict in place (a thread count it settled on).
    info: dict[str, Any] = {}
    # Called with the cores the worker may use now, when the server shares them anew among
    # busy workers; None for a backend that keeps the count it loaded with.
    thread_budget: Callable[[int], None] | None = None


class LoadContext(msgspec.Struct, kw_only=True):
    """What the core tells a backend when it loads a model."""

    # Threads this worker may use, so that all workers together don't oversubscribe cores.
    n_threads: int = 1
    # progress(message, fraction or None): reported in the server log while loading.
    progress: Callable[[str, float | None], None] | None = None

    def report(self, message: str, fraction: float | None = None) -> None:
        if self.progress is not None:
            self.progress(message, fraction)


class ImageInput(msgspec.Struct, kw_only=True):
    """A decoded image (contract 1.1): `width` x `height` pixels, RGB, 3 bytes each, row by
    row. The core decoded and bounded it (llama_api.api.images); `digest` (sha256 of the
    pixels, hex) tells images apart without comparing pixels, e.g. for prompt caches."""

    width: int
    height: int
    rgb: bytes
    digest: str


# Where each image of a request sits (contract 1.1): this text, in a message's `content`,
# once per image, in the order of the request's `images` (llama.cpp mtmd's default marker).
IMAGE_MARKER = "<__media__>"


# What `tool_choice` asks of the model: "function" forces `tool_name`.
ToolChoice = Literal["none", "auto", "required", "function"]


class ResponseFormat(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Constrained output: any JSON object, or JSON that validates against `schema`."""

    type: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None = None


# The sampling fields beyond the common ones that the HTTP layer accepts and passes on in
# `GenerateRequest.extra` when a client sets them (llama.cpp's; a backend may ignore them).
EXTRA_SAMPLING_FIELDS = ("mirostat_mode", "mirostat_tau", "mirostat_eta", "typical_p",
                         "xtc_probability", "xtc_threshold", "grammar")


class GenerateRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One completion (`prompt`) or chat (`messages`) request, for one choice.

    The core validates and normalizes every field before a backend sees it: ranges are
    checked, `logit_bias` keys are token ids, each message's `content` is a string,
    `tools` are function tools with a name, and `tool_choice` is one of `ToolChoice`.
    A backend checks only what depends on its model (vocabulary, context length).
    The core fans out list prompts and `n` > 1 into several of these.
    `None` means "the backend's default".
    """

    prompt: str | list[int] | None = None
    # A text `prompt` is the caller's own template: control-token spellings in it are the
    # tokens. False reads it as plain text. (Chat messages are always plain text.)
    parse_special: bool = True
    # Fill in the middle: the text after the gap `prompt` leads into (completions only).
    suffix: str | None = None
    # [{"role", "content": str, "name"?, "tool_calls"?, "tool_call_id"?}, ...]
    messages: list[dict[str, Any]] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: list[str] = []
    seed: int | None = None
    logit_bias: dict[int, float] | None = None
    # Completions: number of top alternatives per token. Chat: top_logprobs (0 = chosen only).
    logprobs: int | None = None
    echo: bool = False
    # [{"type": "function", "function": {"name", "description"?, "parameters"?}}, ...]
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice | None = None
    tool_name: str | None = None  # the forced function when tool_choice is "function"
    parallel_tool_calls: bool = True  # several calls may come in one answer
    response_format: ResponseFormat | None = None
    # Split the model's thinking into `Delta.reasoning` (False: leave it in the text).
    split_reasoning: bool = True
    # Whether a model that thinks should (each API's reasoning control: chat
    # `reasoning_effort`, Responses `reasoning.effort`, Anthropic `thinking`); False turns
    # thinking off where the model's chat template can (`enable_thinking`). None: its way.
    think: bool | None = None
    # Tokens of thinking after which the backend closes the thinking and the model answers
    # (Anthropic's `thinking.budget_tokens`); None: no budget.
    thinking_budget: int | None = None
    # Extra backend-specific sampling fields the client sent (mirostat, grammar, ...).
    extra: dict[str, Any] = {}
    # Contract 1.1: the images of `messages`, each where an IMAGE_MARKER stands in a
    # `content`. The core sends images only to models whose spec lists the "vision"
    # capability (`ModelSpec.meta["capabilities"]`); other backends never see this field.
    images: list[ImageInput] = []


class TopLogprob(msgspec.Struct, array_like=True):
    token: str
    logprob: float


class TokenLogprob(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The chosen token, its log probability and the top alternatives.

    `logprob` is None for the first token of an echoed prompt (nothing precedes it).
    """

    token: str
    logprob: float | None
    top: list[TopLogprob] = []
    bytes: list[int] | None = None


class ToolCallDelta(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A tool call or a piece of one; pieces with the same index are concatenated."""

    index: int = 0
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Delta(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A piece of generated output. The last delta of a request has `finish_reason` and `usage`."""

    text: str = ""
    # The model's thinking, split from the answer (see `llama_api.text.reasoning`).
    reasoning: str = ""
    logprobs: list[TokenLogprob] | None = None
    tool_calls: list[ToolCallDelta] | None = None
    finish_reason: str | None = None
    # The stop string that ended generation (on the last delta), None for any other end.
    stop_sequence: str | None = None
    usage: Usage | None = None


class EmbedRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Texts (or token id lists) to embed."""

    input: list[str | list[int]]  # all strings, or all token-id lists


class EmbedResult(msgspec.Struct, kw_only=True):
    """One full-width vector per input (lists of floats or a 2-D numpy array), and the
    tokens read. The HTTP layer shortens vectors to a request's `dimensions`."""

    embeddings: Any
    prompt_tokens: int = 0
    # How many texts the batch that served this request held (backends that batch say so).
    batch_size: int = 0


class TokenizeRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Text to tokenize as the model reads it: `text`, or chat `messages` (and `tools`)
    rendered with the model's chat template and its generation prompt.

    Messages are normalized like a GenerateRequest's (each `content` a string). With
    `add_special_tokens` the tokens are those a completion or chat request would feed the
    model (BOS, [CLS] ...); without, the text's own tokens.
    """

    text: str | None = None
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    add_special_tokens: bool = True
    parse_special: bool = True  # `text` as a completion prompt reads it (messages: never)
    with_pieces: bool = False
    images: list[ImageInput] = []  # contract 1.1: as GenerateRequest.images


class TokenizeResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Token ids; with `with_pieces`, each token's text (a list of byte values where the
    token alone is not valid UTF-8); the context the model reads, when it has one."""

    tokens: list[int]
    pieces: list[str | list[int]] | None = None
    max_model_len: int | None = None


class RerankRequest(msgspec.Struct, kw_only=True):
    """A query and the documents to score against it (the core checked both non-empty)."""

    query: str
    documents: list[str]


class RerankResult(msgspec.Struct, kw_only=True):
    """One relevance score per document, in the documents' order; the tokens read."""

    scores: list[float]
    prompt_tokens: int = 0
