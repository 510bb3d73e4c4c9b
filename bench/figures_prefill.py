"""Figure 10: prompt processing. Fresh prompts of about 512, 2k, 4k and 8k tokens, one token
answered: prompt tokens per second through llama-api and llama-server (the same threads),
through llama-cpp-python in this process, and through a bare loop over its low-level API
(`llama_decode` in chunks: the limit for our stack). SmolLM2 reads at most 8,192 tokens,
so the largest size is 8,000."""

from __future__ import annotations

import random
import time
from pathlib import Path

from bench import servers
from bench.context import API, CPP, Bench, rotated
from bench.models import CACHE, SMOLLM2, smollm2_path
from bench.results import Figure
from bench.streams import request

SIZES = (512, 2048, 4096, 8000)
N_CTX = 8192
LLM = "in-process llama-cpp-python (Llama.eval)"
BARE = "bare low-level loop (llama_decode)"
WORDS = ["river", "stone", "market", "violet", "engine", "quietly", "north", "paper", "seven",
         "garden", "silver", "window", "thunder", "method", "orange", "fabric", "lantern",
         "quiet", "harbor", "pencil"]


class Prompts:
    """Texts of a given token count, each starting differently, so that no server can reuse
    a cached prefix of an earlier one."""

    def __init__(self, path: Path):
        from llama_cpp import Llama

        self.llm = Llama(str(path), vocab_only=True, verbose=False)
        self.made = 0

    def text(self, size: int) -> tuple[str, list[int]]:
        self.made += 1
        pick = random.Random(self.made)
        words = [f"Request {self.made}:"] + [pick.choice(WORDS) for _ in range(size)]
        tokens = self.llm.tokenize(" ".join(words).encode())[:size]
        return self.llm.detokenize(tokens).decode("utf-8", errors="ignore"), tokens


class Bare:
    """One llama.cpp context, a batch of 2,048 tokens (micro-batches of 512, llama-server's
    defaults), and nothing else: tokens in, logits of the last one out."""

    def __init__(self, path: Path, threads: int):
        import llama_cpp

        self.lib = llama_cpp
        self.model = llama_cpp.llama_model_load_from_file(
            str(path).encode(), llama_cpp.llama_model_default_params())
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = N_CTX, 2048, 512
        params.n_threads = params.n_threads_batch = threads
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        self.batch = llama_cpp.llama_batch_init(2048, 0, 1)

    def prefill(self, tokens: list[int]) -> float:
        lib, batch = self.lib, self.batch
        lib.llama_memory_clear(lib.llama_get_memory(self.ctx), True)
        began = time.perf_counter()
        for start in range(0, len(tokens), 2048):
            chunk = tokens[start:start + 2048]
            batch.n_tokens = len(chunk)
            for i, token in enumerate(chunk):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = start + i == len(tokens) - 1
            if lib.llama_decode(self.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
        return time.perf_counter() - began

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)
        self.lib.llama_model_free(self.model)


def in_process_prefill(llm, tokens: list[int]) -> float:
    llm.reset()  # eval then drops every cached cell past position 0
    began = time.perf_counter()
    llm.eval(tokens)
    return time.perf_counter() - began


def served_prefill(bench: Bench, url: str, model: str, text: str) -> tuple[float, int]:
    body = {"model": model, "prompt": text, "max_tokens": 1, "temperature": 0}
    began = time.perf_counter()
    answer = request(bench.client, f"{url}/v1/completions", body)
    return time.perf_counter() - began, answer["usage"]["prompt_tokens"]


def prefill(bench: Bench) -> list[Figure]:
    from llama_cpp import Llama

    gguf = smollm2_path()
    config = CACHE / "prefill-models.toml"
    config.write_text(f'[models.{SMOLLM2}]\nbackend = "llamacpp"\npath = "{gguf}"\n'
                      f"options = {{n_ctx = {N_CTX}}}\n")
    empty = CACHE / "models-dirs" / "none"  # the model comes from the config alone
    empty.mkdir(parents=True, exist_ok=True)
    ours = servers.llama_api(empty, "--config", str(config), name="llama-api (n_ctx 8192)")
    theirs = servers.llama_server(bench.llama_server_binary, gguf, SMOLLM2, bench.threads,
                                  parallel=1, n_ctx=N_CTX, name="llama-server (-c 8192)")
    prompts, bare = Prompts(gguf), Bare(gguf, bench.threads)
    llm = Llama(str(gguf), n_ctx=N_CTX, n_batch=2048, n_threads=bench.threads,
                n_threads_batch=bench.threads, verbose=False)
    figures = []
    try:
        for server in (ours, theirs):
            bench.start(server)
            served_prefill(bench, server.url, SMOLLM2, "warm up")
        urls = {API: ours.url, CPP: theirs.url}
        for size in SIZES:
            figure = Figure(f"prefill_{size}", f"10. Prompt processing, ~{size} fresh tokens",
                            "tok/s", CPP, note="one token answered; every prompt starts "
                            "differently, so no cached prefix is reused")
            for r in range(bench.rounds):
                for label in rotated([API, CPP, LLM, BARE], r):
                    text, tokens = prompts.text(size)
                    if label in urls:
                        seconds, read = served_prefill(bench, urls[label], SMOLLM2, text)
                    elif label == LLM:
                        seconds, read = in_process_prefill(llm, tokens), len(tokens)
                    else:
                        seconds, read = bare.prefill(tokens), len(tokens)
                    figure.add(label, read / seconds)
                bench.log(f"prefill ~{size}, round {r + 1}: " + ", ".join(
                    f"{label} {figure.values[label][-1]:.0f}" for label in figure.values))
            figures.append(figure)
    finally:
        ours.stop()
        theirs.stop()
        bare.close()
        llm.close()
    return figures
