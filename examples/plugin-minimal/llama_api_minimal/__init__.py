"""A minimal llama-api backend: a `*.wordchain` text file is a model that continues a
prompt with words that followed its last word in that text. It streams, stops, cancels and
embeds as a real backend does, with no library to install."""

from __future__ import annotations

import hashlib
import math
import random
import time
from itertools import pairwise
from pathlib import Path

from llama_api import errors
from llama_api.contract import (
    BackendInfo,
    Delta,
    EmbedResult,
    LoadedModel,
    ModelSpec,
    Usage,
    hookimpl,
)
from llama_api.text.stops import StopHoldback

LLAMA_API_CONTRACT = "1.0"  # the contract this plugin was written for
BACKEND = "wordchain"


class WordChain:
    """For each word of the text, the words that follow it there, in order."""

    def __init__(self, spec: ModelSpec):
        words = Path(spec.path).read_text(encoding="utf-8").split()
        if len(words) < 2:
            raise errors.ModelLoadError(f"{Path(spec.path).name} has fewer than two words")
        self.following: dict[str, list[str]] = {}
        for word, after in pairwise(words):
            self.following.setdefault(word, []).append(after)
        self.start = words[0]
        # seconds per word: a real model takes time per token, so streams are visible
        self.delay = float(spec.options.get("delay", 0.02))


# -- in the server process: keep these light -----------------------------------------------

@hookimpl
def register_backends():
    return [BackendInfo(name=BACKEND, description="word chains from *.wordchain text files")]


@hookimpl
def discover_models(models_dir):
    return [ModelSpec(id=path.stem, backend=BACKEND, path=str(path))
            for path in sorted(Path(models_dir).glob("*.wordchain"))]


@hookimpl
def estimate_memory(spec, gpu):
    try:  # about ten times the text, in Python's dicts and lists; nothing on a GPU
        return (10 * Path(spec.path).stat().st_size, 0)
    except OSError:
        return None  # no estimate: the load then says what is wrong


# -- in the worker process, which hosts this plugin alone ----------------------------------

@hookimpl
def load_model(spec, context):
    context.report(f"reading {Path(spec.path).name}")
    try:
        model = WordChain(spec)
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.ModelLoadError(f"cannot read {Path(spec.path).name}: {exc}") from None
    return LoadedModel(model=model, slots=4, info={"words": len(model.following)})


@hookimpl
def generate(model, request, cancelled):
    if request.messages is not None:  # no chat template: the turns' text, joined
        prompt = " ".join(message["content"] for message in request.messages)
    elif isinstance(request.prompt, str):
        prompt = request.prompt
    else:
        raise errors.NotSupported("a wordchain model reads text prompts, not token ids")
    return words_after(model, prompt.split(), request, cancelled)


def words_after(model: WordChain, prompt: list[str], request, cancelled):
    pick = random.Random(request.seed)
    greedy = request.temperature == 0
    word, stops = (prompt or [model.start])[-1], StopHoldback(request.stop)
    produced, finish = 0, "length"
    while produced < (request.max_tokens or 16) and not cancelled.is_set():
        choices = model.following.get(word) or [model.start]
        word = choices[0] if greedy else pick.choice(choices)
        produced += 1
        time.sleep(model.delay)
        text = stops.feed(" " + word if produced > 1 else word)
        if text:
            yield Delta(text=text)
        if stops.stopped:
            finish = "stop"
            break
    rest = stops.flush()  # text held as a possible start of a stop string that wasn't
    if rest:
        yield Delta(text=rest)
    yield Delta(finish_reason=finish, stop_sequence=stops.matched,
                usage=Usage(prompt_tokens=len(prompt), completion_tokens=produced))


@hookimpl
def embed(model, request):
    """A hashed bag of words, 64 values, unit length (token-id inputs are words too)."""
    vectors = []
    for item in request.input:
        vector = [0.0] * 64
        for word in (item.split() if isinstance(item, str) else map(str, item)):
            vector[hashlib.sha256(word.encode()).digest()[0] % 64] += 1.0
        norm = math.sqrt(sum(value * value for value in vector)) or 1.0
        vectors.append([value / norm for value in vector])
    tokens = sum(len(item.split()) if isinstance(item, str) else len(item)
                 for item in request.input)
    return EmbedResult(embeddings=vectors, prompt_tokens=tokens)


@hookimpl
def unload_model(model):
    model.following.clear()
