"""One measured request: a completion streamed through httpx, or the same completion in
process; each checks that the answer has exactly the asked tokens."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import httpx

# The same text for every server: a chat turn already in SmolLM2's ChatML format, sent as a
# plain completion so that no server's chat template changes the prompt's tokens.
PROMPT = ("<|im_start|>user\nWrite a long story about a dragon who learns to bake bread."
          "<|im_end|>\n<|im_start|>assistant\n")


class WrongTokenCount(AssertionError):
    pass


@dataclass
class Stream:
    tokens: int          # completion tokens, as the server reported them (or counted)
    ttft: float          # seconds from sending to the first token's text
    first: float         # perf_counter of the first and last token's text
    last: float
    sent: float

    @property
    def decode_rate(self) -> float:
        """Tokens per second after the first one (the prompt's time left out)."""
        return (self.tokens - 1) / (self.last - self.first) if self.last > self.first else 0.0


def completion_body(model: str, tokens: int, stop_ids: tuple[int, ...], stream: bool = True,
                    **more) -> dict:
    """Greedy, `tokens` long: every end-of-generation token biased away (and `ignore_eos`
    for the servers that know it; the others ignore the field). Streamed with usage in the
    last chunk, or (`stream=False`) one JSON answer."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0,
            "logit_bias": {str(i): -100 for i in stop_ids}, "ignore_eos": True,
            "stream": stream, **more}
    if stream:
        body.setdefault("stream_options", {"include_usage": True})
    return body


def reported_tokens(chunk: dict) -> int | None:
    usage = chunk.get("usage") or {}
    if usage.get("completion_tokens") is not None:
        return usage["completion_tokens"]
    timings = chunk.get("timings") or {}  # llama-server's own field
    return timings.get("predicted_n")


def stream(client: httpx.Client, url: str, body: dict, expected: int | None,
           on_first: threading.Event | None = None) -> Stream:
    """POST a streamed completion, time its text chunks, and check its token count: the
    count the server reports, else one token per text chunk (llama-cpp-python's server
    sends each token as it comes and reports no usage in a stream)."""
    sent = time.perf_counter()
    first = last = 0.0
    chunks = 0
    reported = None
    with client.stream("POST", url + "/v1/completions", json=body, timeout=600) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"{url}: {response.status_code} {response.text[:300]}")
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            reported = reported_tokens(chunk) or reported
            if any(choice.get("text") for choice in chunk.get("choices") or ()):
                last = time.perf_counter()
                if not first:
                    first = last
                    if on_first is not None:
                        on_first.set()
                chunks += 1
    tokens = reported if reported is not None else chunks
    if expected is not None and tokens != expected:  # None: the answer may end by itself
        raise WrongTokenCount(f"{url} answered {tokens} tokens, not {expected} "
                              f"(reported {reported}, {chunks} text chunks)")
    return Stream(tokens=tokens, ttft=first - sent, first=first, last=last, sent=sent)


def request(client: httpx.Client, url: str, body: dict) -> dict:
    """A plain (not streamed) request; returns its JSON."""
    response = client.post(url, json=body, timeout=600)
    if response.status_code != 200:
        raise RuntimeError(f"{url}: {response.status_code} {response.text[:300]}")
    return response.json()


class InProcess:
    """llama-cpp-python's high-level API in this process: the engine with no server."""

    def __init__(self, path, threads: int, n_ctx: int = 2048):
        from llama_cpp import Llama

        self.llm = Llama(str(path), n_ctx=n_ctx, n_threads=threads, verbose=False)

    def stream(self, tokens: int, stop_ids: tuple[int, ...]) -> Stream:
        from llama_cpp import LogitsProcessorList

        sampled = 0
        stop = list(stop_ids)

        # One processor that biases and counts: llama-cpp-python 0.3.36 drops both when
        # given `logit_bias` and `logits_processor` together (list.extend returns None).
        def bias_and_count(_ids, scores):
            nonlocal sampled
            sampled += 1
            scores[stop] -= 100.0
            return scores

        sent = time.perf_counter()
        first = last = 0.0
        for chunk in self.llm.create_completion(
                PROMPT, max_tokens=tokens, temperature=0, stream=True,
                logits_processor=LogitsProcessorList([bias_and_count])):
            if chunk["choices"][0]["text"]:
                last = time.perf_counter()
                first = first or last
        if sampled != tokens:
            raise WrongTokenCount(f"in-process answered {sampled} tokens, not {tokens}")
        return Stream(tokens=sampled, ttft=first - sent, first=first, last=last, sent=sent)


RAW_LOAD = """
import sys, time
from llama_cpp import Llama
began = time.perf_counter()
Llama(sys.argv[1], n_ctx=2048, n_threads=int(sys.argv[2]), verbose=False)
print(time.perf_counter() - began)
"""


def raw_load_seconds(path, threads: int) -> float:
    """Seconds `Llama(path)` takes in a fresh process (the interpreter and import left out)."""
    done = subprocess.run([sys.executable, "-c", RAW_LOAD, str(path), str(threads)],
                          capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


class BusyCore:
    """Another process keeping one core busy (a plain busy loop) while the block runs."""

    def __enter__(self):
        self.process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)  # let the scheduler see it as a running task
        return self

    def __exit__(self, *exc):
        self.process.kill()
        self.process.wait()
