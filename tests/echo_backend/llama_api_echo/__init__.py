"""A deterministic test backend, installed through a real entry point.

A model is a `*.echo` file holding JSON options:
  delay        seconds per generated token (default 0)
  slots        requests run at once (default 1)
  load_delay   seconds spent loading (default 0)
  fail_load    a load error message to raise
  raise_load   a message for a plain RuntimeError while loading (a backend bug)
  abort_load   true: the process aborts while loading (SIGABRT, as a crashing C library)
  context      tokens a request's prompt words and max_tokens may add up to (default: no bound)
  max_prompt   words a prompt may hold (default 1000; coding agents send thousands)
  default_max_tokens  tokens generated when a request sets no max_tokens (default 16)
  noisy        write to fd 1 while loading and generating, as chatty C libraries do
  stall        seconds to pause before token number `stall_after` (default 0: none)
The file's bytes are the model's "weights": the worker holds them in memory, and the
`estimate_memory` hook says the model takes the file's size (pad the file to make a
model that takes more).
A prompt of more than `max_prompt` words is refused as a real backend refuses what its context
can't hold (context_length_exceeded); so is one whose words and max_tokens add up to more
than the model's `context` option, when it has one.
A prompt containing the word SILENT makes generate yield nothing at all.
A prompt containing the word GROW makes the worker's memory grow by 16 MiB every 10 ms while
it serves, up to 4 GiB, then answer "grown" (a runaway backend, for the memory watchdog).
A prompt containing the word RAISE makes generate raise a RuntimeError (a backend bug);
the word MALFORMED makes it yield a delta whose usage holds a float (a backend bug that
encodes fine in the worker but does not decode as the protocol's types).
Generation repeats the prompt's words ("w0 w1 ...") cyclically, one word per token.
A prompt that has the word <think> thinks: its output's leading <think>...</think> block
comes back as reasoning (unless the request asks to keep it inline).
A prompt with the word ONCE says its words once and stops (finish_reason "stop"), as a model
ends its turn. A prompt with the word CALL, sent with tools, calls each tool once (only the
forced one under a named tool_choice) with arguments {"words": <prompt word count>} sent in
two pieces, and finishes with "tool_calls"; once the conversation holds a tool result (a
"tool" message), it answers in words instead, as a model does when it has what it called for.
Tokens are words: a word's id is a stable hash of it, `t<n>` is token n (as a token-id
prompt is read), and detokenize spells back the words the worker has seen (others as
`t<n>`). Option `tokenizer: false` makes a model without a tokenizer. Rerank scores a
document by the share of the query's words it holds (case-insensitive); option
`rerank: false` makes a model that can't rerank.
Set LLAMA_API_ECHO_EVENTS to a file path to have the worker append one JSON line per
event (prepared: a worker started, before any model; start, end, cancelled) with its
model, pid and time; `start` also holds what the core handed the backend (`request`: the
normalized fields tests check). Tests read them with tests/support.py's read_events.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import msgspec

from llama_api import errors
from llama_api.contract import hookimpl
from llama_api.contract.records import (
    BackendInfo,
    Delta,
    EmbedResult,
    LoadedModel,
    ModelSpec,
    RerankResult,
    TokenizeResult,
    ToolCallDelta,
    Usage,
)
from llama_api.text.reasoning import ReasoningSplitter
from llama_api.text.stops import StopHoldback

LLAMA_API_CONTRACT = "1.0"


def record(event: str, model: EchoModel | None, **fields) -> None:
    path = os.environ.get("LLAMA_API_ECHO_EVENTS")
    if path:
        line = json.dumps({"event": event, "model": model.id if model else None,
                           "pid": os.getpid(),
                           "time": time.time(), **fields})
        with open(path, "a") as f:
            f.write(line + "\n")


class EchoModel:
    def __init__(self, spec: ModelSpec, options: dict):
        self.id = spec.id
        self.delay = float(options.get("delay", 0))
        self.slots = int(options.get("slots", 1))
        self.noisy = bool(options.get("noisy"))
        self.stall = float(options.get("stall", 0))
        self.stall_after = int(options.get("stall_after", 0))
        self.context = int(options.get("context", 0))  # 0: max_tokens is not bounded
        self.max_prompt = int(options.get("max_prompt", ECHO_CONTEXT))
        self.default_max_tokens = int(options.get("default_max_tokens", 16))
        # `served` changes as it serves: the worker tells the server (InfoChanged)
        self.info = {"delay": self.delay, "served": 0, "budgets": []}
        self.weights = b""  # the file's bytes, held as a model holds its weights
        self.tokenizes = options.get("tokenizer", True) is not False
        self.reranks = options.get("rerank", True) is not False
        self.vocabulary: dict[int, str] = {}  # token id -> word, for the words seen

    def thread_budget(self, threads: int) -> None:
        """The cores the server says this worker may use now (recorded for tests)."""
        self.info["budgets"] = [*self.info["budgets"], threads]


@hookimpl
def register_backends():
    return [BackendInfo(name="echo", description="deterministic test backend")]


@hookimpl
def discover_models(models_dir):
    return [
        ModelSpec(id=path.stem, backend="echo", path=str(path))
        for path in sorted(Path(models_dir).glob("*.echo"))
    ]


@hookimpl
def estimate_memory(spec):
    try:
        return (Path(spec.path).stat().st_size, 0)
    except OSError:
        return None


@hookimpl
def prepare_worker():
    record("prepared", None)


@hookimpl
def load_model(spec, context):
    try:
        options = {**json.loads(Path(spec.path).read_text() or "{}"), **spec.options}
    except (OSError, ValueError) as exc:
        raise errors.ModelLoadError(f"cannot read echo model {spec.path}: {exc}") from None
    if options.get("fail_load"):
        raise errors.ModelLoadError(f"{Path(spec.path).name}: {options['fail_load']}")
    if options.get("raise_load"):  # a backend bug while loading
        raise RuntimeError(options["raise_load"])
    if options.get("abort_load"):  # a C library that crashes the process while loading
        os.abort()
    if options.get("noisy"):
        os.write(1, b"noise on stdout while loading\n")
    load_delay = float(options.get("load_delay", 0))
    for step in range(4):
        context.report(f"loading {spec.id}", step / 4)
        time.sleep(load_delay / 4)
    model = EchoModel(spec, options)
    model.weights = Path(spec.path).read_bytes()
    model.info["n_threads"] = context.n_threads
    return LoadedModel(model=model, slots=model.slots, info=model.info,
                       thread_budget=model.thread_budget)


def prompt_words(request) -> list[str]:
    if request.messages is not None:  # the core has made every content a string
        text = " ".join(m["content"] for m in request.messages)
    elif isinstance(request.prompt, list):
        text = " ".join(f"t{token}" for token in request.prompt)
    else:
        text = request.prompt or ""
    return text.split() or ["empty"]


@hookimpl
def generate(model, request, cancelled):
    if request.suffix is not None:
        raise errors.NotSupported(f"model {model.id} can't fill in the middle (no FIM tokens)",
                                  param="suffix")
    words = prompt_words(request)
    if "SILENT" in words:  # a backend that yields nothing at all
        return iter(())
    if "RAISE" in words:  # a backend bug, as a plain exception
        raise RuntimeError("echo was asked to fail")
    if "GROW" in words:
        return grow(model, cancelled)
    if "MALFORMED" in words:
        return iter([Delta(text="x", finish_reason="stop",
                           usage=Usage(prompt_tokens=0.5, completion_tokens=1))])
    if len(words) > model.max_prompt:
        raise errors.ContextLengthExceeded(
            f"prompt has {len(words)} tokens, more than the context of {model.max_prompt} tokens",
            param="messages")
    if model.context and len(words) + (request.max_tokens or 0) > model.context:
        raise errors.ContextLengthExceeded(
            f"prompt ({len(words)} tokens) + max_tokens ({request.max_tokens}) is more than "
            f"the context of {model.context} tokens", param="max_tokens")
    answered = any(m.get("role") == "tool" for m in request.messages or [])
    if "CALL" in words and request.tools and request.tool_choice != "none" and not answered:
        return echo_tool_calls(model, request, words)
    return echo_tokens(model, request, words, cancelled)


def received(request) -> dict:
    """What the core handed over, as JSON can carry it (logit_bias as [token id, bias] pairs,
    so that a test can see the ids are ints)."""
    fields = msgspec.to_builtins(request)
    fields.pop("messages", None)
    fields["contents"] = [m["content"] for m in request.messages or []]
    fields["logit_bias"] = sorted((request.logit_bias or {}).items())
    return fields


def echo_tokens(model, request, words, cancelled):
    max_tokens = request.max_tokens or model.default_max_tokens
    record("start", model, request=received(request))
    stops = StopHoldback(request.stop)
    thinking = (ReasoningSplitter() if request.split_reasoning and "<think>" in words
                else None)

    def pieces(text: str):
        if thinking is None:
            return Delta(text=text) if text else None
        reasoning, answer = thinking.feed(text)
        return Delta(reasoning=reasoning, text=answer) if reasoning or answer else None

    produced = 0
    finish = "length"
    try:
        for i in range(max_tokens):
            if cancelled.is_set():
                return
            if "ONCE" in words and i == len(words):
                finish = "stop"
                break
            if model.delay:
                time.sleep(model.delay)
            if model.stall and i == model.stall_after:
                time.sleep(model.stall)
            if model.noisy:
                os.write(1, b"noise on stdout while generating\n")
            produced += 1
            delta = pieces(stops.feed(("" if i == 0 else " ") + words[i % len(words)]))
            if delta:
                yield delta
            if stops.stopped:
                finish = "stop"
                break
        delta = pieces(stops.flush())
        if delta:
            yield delta
        if thinking is not None:
            reasoning, answer = thinking.flush()
            if reasoning or answer:
                yield Delta(reasoning=reasoning, text=answer)
    finally:
        # The worker may close this generator (GeneratorExit) or we may see the flag first.
        if cancelled.is_set():
            record("cancelled", model, produced=produced)
    record("end", model, produced=produced)
    model.info["served"] += 1
    yield Delta(finish_reason=finish, stop_sequence=stops.matched,
                usage=Usage(prompt_tokens=len(words), completion_tokens=produced))


def grow(model, cancelled):
    """Hold more and more memory (pages written, so resident), at most 4 GiB."""
    record("start", model)
    held = []
    for _ in range(256):
        if cancelled.is_set():
            return
        held.append(b"\x01" * (16 * 2**20))
        time.sleep(0.01)
    yield Delta(text="grown", finish_reason="stop",
                usage=Usage(prompt_tokens=1, completion_tokens=1))


def echo_tool_calls(model, request, words):
    record("start", model, request=received(request))
    names = ([request.tool_name] if request.tool_choice == "function"
             else [tool["function"]["name"] for tool in request.tools])
    for index, name in enumerate(names):
        yield Delta(tool_calls=[ToolCallDelta(index=index, id=f"call_{index}", name=name,
                                              arguments='{"words": ')])
        yield Delta(tool_calls=[ToolCallDelta(index=index, arguments=f"{len(words)}}}")])
    record("end", model, produced=2 * len(names))
    yield Delta(finish_reason="tool_calls",
                usage=Usage(prompt_tokens=len(words), completion_tokens=2 * len(names)))


@hookimpl
def embed(model, request):
    dims = 8  # the core cuts to `dimensions`
    vectors, tokens = [], 0
    for item in request.input:
        text = item if isinstance(item, str) else " ".join(map(str, item))
        tokens += len(text.split())
        digest = hashlib.sha256(text.encode()).digest()
        vectors.append([b / 255.0 for b in digest[:dims]])
    return EmbedResult(embeddings=vectors, prompt_tokens=tokens)


ECHO_CONTEXT = 1000  # generate refuses prompts of more words


def word_id(word: str) -> int:
    if word[:1] == "t" and word[1:].isdigit() and int(word[1:]) < 2**31:
        return int(word[1:])
    return int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "big") >> 1


@hookimpl
def tokenize(model, request):
    if not model.tokenizes:
        return None
    if request.messages is not None:  # the words generate counts as the prompt's tokens
        words = " ".join(m["content"] for m in request.messages).split()
    else:
        words = (request.text or "").split()
    tokens = [word_id(word) for word in words]
    model.vocabulary.update(zip(tokens, words))
    return TokenizeResult(tokens=tokens, pieces=words if request.with_pieces else None,
                          max_model_len=model.max_prompt)


@hookimpl
def detokenize(model, tokens):
    if not model.tokenizes:
        return None
    return " ".join(model.vocabulary.get(token, f"t{token}") for token in tokens)


@hookimpl
def rerank(model, request):
    if not model.reranks:
        return None
    query = set(request.query.lower().split())
    scores, tokens = [], 0
    for document in request.documents:
        words = document.lower().split()
        scores.append(len(query & set(words)) / max(1, len(query)))
        tokens += len(request.query.split()) + len(words)
    return RerankResult(scores=scores, prompt_tokens=tokens)


@hookimpl
def unload_model(model):
    model.weights = b""
