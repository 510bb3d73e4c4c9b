"""Figures on serving around the model: cold start (5), embeddings (6), per-request
overhead and idle memory (7)."""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx

from bench import servers
from bench.context import API, CPP, Bench, rotated
from bench.models import (
    MINILM,
    SMOLLM2,
    TINY,
    end_of_generation_ids,
    models_dir,
    smollm2_path,
    tiny_path,
)
from bench.results import Figure
from bench.streams import raw_load_seconds, request, stream

COLD = "llama-api: TTFT of a model not loaded"
COLD_SPARE = "llama-api --spare-worker: TTFT of a model not loaded"
RAW = "raw in-process load (Llama(path))"
CPP_COLD = "llama-server: process start to first token"


def cold_start(bench: Bench) -> list[Figure]:
    figure = Figure("cold_start", "5. Cold start", "s", RAW,
                    note="llama-api's model is unloaded through /admin before each round; "
                         "with `--spare-worker` a started worker (llama_cpp imported) takes "
                         "the load")
    spare = servers.llama_api(models_dir("main", {SMOLLM2: smollm2_path()}), "--spare-worker",
                              name="llama-api --spare-worker")
    bench.start(spare)
    time.sleep(2.0)  # its spare starts once it serves: let it import before round 1
    urls = {COLD: bench.servers[API].url, COLD_SPARE: spare.url}
    tasks = [COLD_SPARE, COLD, RAW, CPP_COLD]
    try:
        for r in range(bench.rounds):
            for task in rotated(tasks, r):
                cold_round(bench, figure, task, urls)
            bench.log(f"cold start, round {r + 1}: " + ", ".join(
                f"{task} {figure.values[task][-1]:.2f} s" for task in tasks))
    finally:
        spare.stop()
    return [figure]


def cold_round(bench: Bench, figure: Figure, task: str, urls: dict[str, str]) -> None:
    if task in urls:
        url = urls[task]
        response = bench.client.post(f"{url}/admin/models/{SMOLLM2}/unload", json={})
        response.raise_for_status()
        figure.add(task, bench.stream(API, tokens=4, url=url).ttft)
        if task == COLD_SPARE:  # its next spare starts now: let it, before the next measure
            time.sleep(2.0)
    elif task == RAW:
        figure.add(task, raw_load_seconds(smollm2_path(), bench.threads))
    else:
        figure.add(task, llama_server_first_token(bench))


def llama_server_first_token(bench: Bench) -> float:
    server = servers.llama_server(bench.llama_server_binary, smollm2_path(), SMOLLM2,
                                  threads=None, parallel=1, name="llama-server (cold)")
    began = time.perf_counter()
    bench.commands[server.name] = server.command()
    try:
        server.start()
        stream(bench.client, server.url, bench.body(tokens=4), 4)
        return time.perf_counter() - began
    finally:
        server.stop()


TEXTS = [f"Sentence number {i} is about {topic}." for i, topic in enumerate(
    ["rivers", "bread", "engines", "music", "snow", "chess", "birds", "glass"] * 8)]


def embeddings(bench: Bench) -> list[Figure]:
    batch, single = "one 64-text request", "64 concurrent single-text requests"
    figure = Figure("embeddings", "6. Embeddings (all-MiniLM-L6-v2): 64 texts", "s", batch,
                    note="lower is better")
    server = servers.llama_api(models_dir("embeddings", {}), plugins="embeddings",
                               name="llama-api (embeddings)")
    bench.start(server)
    url = server.url + "/v1/embeddings"

    def one_request():
        answer = request(bench.client, url, {"model": MINILM, "input": TEXTS})
        assert len(answer["data"]) == len(TEXTS), "embeddings: not one vector per text"

    async def concurrent():
        async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as client:
            answers = await asyncio.gather(*(client.post(url, json={"model": MINILM, "input": text})
                                             for text in TEXTS))
        assert all(a.status_code == 200 and len(a.json()["data"]) == 1 for a in answers), \
            "embeddings: a single-text request failed"

    try:
        one_request()  # load the model
        for r in range(bench.rounds):
            for task in rotated([batch, single], r):
                began = time.perf_counter()
                one_request() if task == batch else asyncio.run(concurrent())
                figure.add(task, time.perf_counter() - began)
        bench.log(f"embeddings: concurrent {figure.ratio(single):.2f}x the time of one batch")
    finally:
        server.stop()
    return [figure]


def overhead(bench: Bench) -> list[Figure]:
    """1-token completions one after another on a tiny GGUF: what a request costs beyond
    the model's compute."""
    tiny = tiny_path()
    api = servers.llama_api(models_dir("tiny", {TINY: tiny}), name="llama-api (tiny)")
    cpp = servers.llama_server(bench.llama_server_binary, tiny, TINY, threads=None, parallel=1,
                               name="llama-server (tiny)")
    rate = Figure("overhead_rate", "7. Per-request overhead: 1-token completions per second "
                  "(tiny GGUF, one request at a time)", "req/s", CPP)
    p50 = Figure("overhead_p50", "7. Per-request latency, p50", "ms", CPP, note="lower is better")
    p99 = Figure("overhead_p99", "7. Per-request latency, p99", "ms", CPP, note="lower is better")
    memory = Figure("idle_rss", "7. Idle resident memory", "MiB", None)
    body = {"model": TINY, "prompt": "hello world", "max_tokens": 1, "temperature": 0,
            "logit_bias": {str(i): -100 for i in end_of_generation_ids(tiny)}}
    try:
        for server in (api, cpp):
            bench.start(server)
        targets = {API: api, CPP: cpp}
        for label, server in targets.items():
            latencies(bench, server.url, body, 5)  # warm up (loads llama-api's worker)
        for r in range(bench.rounds):
            for label in rotated(list(targets), r):
                times = latencies(bench, targets[label].url, body, bench.overhead_requests)
                rate.add(label, len(times) / sum(times))
                p50.add(label, 1000 * statistics.median(times))
                p99.add(label, 1000 * percentile(times, 0.99))
        bench.log("overhead: " + ", ".join(f"{label} {rate.median(label):.0f} req/s"
                                            for label in targets))
        time.sleep(1.0)  # idle: let the servers settle before reading their memory
        for label, value in idle_memory(bench, api, cpp).items():
            memory.add(label, value / 2**20)
    finally:
        api.stop()
        cpp.stop()
    return [rate, p50, p99, memory]


def latencies(bench: Bench, url: str, body: dict, count: int) -> list[float]:
    times = []
    for _ in range(count):
        began = time.perf_counter()
        answer = request(bench.client, url + "/v1/completions", body)
        times.append(time.perf_counter() - began)
        tokens = answer["usage"]["completion_tokens"]
        if tokens != 1:
            raise AssertionError(f"{url}: a 1-token completion answered {tokens} tokens")
    return times


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def idle_memory(bench: Bench, api_tiny, cpp_tiny) -> dict[str, float]:
    """Each server process's own RSS, and llama-api's workers' (from /admin/models)."""
    found = {"llama-api server process (tiny loaded)": api_tiny.rss(),
             "llama-api worker, tiny GGUF": worker_rss(api_tiny.url, TINY),
             "llama-server, tiny GGUF": cpp_tiny.rss()}
    for label, server in bench.servers.items():
        found[f"{label} process, SmolLM2 loaded"] = server.rss()
    found["llama-api worker, SmolLM2"] = worker_rss(bench.servers[API].url, SMOLLM2)
    return {label: value for label, value in found.items() if value is not None}


def worker_rss(url: str, model: str) -> int | None:
    answer = httpx.get(f"{url}/admin/models/{model}", timeout=30)
    return answer.json().get("rss_bytes") if answer.status_code == 200 else None


