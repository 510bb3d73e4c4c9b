"""Figures on decoding: one stream (1), concurrent streams (2), a busy core (3), two models
at once (4), n=4 in one request (8)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from bench import servers
from bench.context import API, CPP, IN_PROCESS, Bench, aggregate_rate, rotated
from bench.models import GEMMA, SMOLLM2, gemma_path, models_dir, smollm2_path
from bench.results import Figure
from bench.streams import BusyCore, request

SETTLE_SECONDS = 1.0


def warm_up(bench: Bench, labels: list[str]) -> None:
    """One short untimed request each: loads models, fills caches, opens connections; then a
    pause, so that no load's aftermath is measured."""
    for label in labels:
        bench.stream(label, tokens=4)
    time.sleep(SETTLE_SECONDS)


def one_stream(bench: Bench) -> list[Figure]:
    labels = bench.compared()
    decode = Figure("one_stream_decode", "1. One stream: decode rate", "tok/s", CPP)
    ttft = Figure("one_stream_ttft", "1. One stream: time to first token", "s", CPP,
                  note="lower is better")
    warm_up(bench, labels)
    for r in range(bench.rounds):
        for label in rotated(labels, r):
            result = bench.stream(label)
            decode.add(label, result.decode_rate)
            ttft.add(label, result.ttft)
        bench.log(f"one stream, round {r + 1}: " + ", ".join(
            f"{label} {decode.values[label][-1]:.1f} tok/s" for label in labels))
    return [decode, ttft]


def concurrency(bench: Bench) -> list[Figure]:
    labels = list(bench.servers)
    figures = []
    for level in bench.concurrency:
        figure = Figure(f"concurrent_{level}", f"2. {level} concurrent streams: aggregate rate",
                        "tok/s", CPP, note="llama-server runs `-np 4`")
        for r in range(bench.rounds):
            for label in rotated(labels, r):
                figure.add(label, aggregate_rate(bench.concurrent(label, level)))
        bench.log(f"{level} streams: " + ", ".join(
            f"{label} {figure.median(label):.1f} tok/s" for label in labels))
        figures.append(figure)
    ttft = Figure("ttft_under_load", "2. Time to first token of a request arriving while 3 "
                  "others decode", "s", CPP, note="lower is better")
    for r in range(bench.rounds):
        for label in rotated(labels, r):
            ttft.add(label, ttft_while_decoding(bench, label, 3))
    bench.log("TTFT under load: " + ", ".join(f"{label} {ttft.median(label):.3f} s" for label in labels))
    figures.append(ttft)
    return figures


def ttft_while_decoding(bench: Bench, label: str, others: int) -> float:
    """Start `others` streams, and once each has its first token, time one more."""
    firsts = [threading.Event() for _ in range(others)]
    with ThreadPoolExecutor(others) as pool:
        running = [pool.submit(bench.stream, label, on_first=first) for first in firsts]
        for first in firsts:
            if not first.wait(600):
                raise RuntimeError(f"{label}: a background stream never started")
        arriving = bench.stream(label)
        for future in running:
            future.result()
    return arriving.ttft


def contention(bench: Bench) -> list[Figure]:
    labels = bench.compared()
    figure = Figure("contention", "3. One stream while another process keeps one core busy",
                    "tok/s", CPP, note="llama-server with its default threads")
    for r in range(bench.rounds):
        with BusyCore():
            for label in rotated(labels, r):
                figure.add(label, bench.stream(label).decode_rate)
        bench.log(f"contention, round {r + 1}: " + ", ".join(
            f"{label} {figure.values[label][-1]:.1f} tok/s" for label in labels))
    return [figure]


def two_models(bench: Bench) -> list[Figure]:
    """SmolLM2 and gemma-3-270m streaming at once on one `--max-workers 2` server, each
    against itself alone in process with every core (the engine's ceiling)."""
    gemma = gemma_path()
    server = servers.llama_api(models_dir("two-models", {GEMMA: gemma}), "--max-workers", "2",
                               name="llama-api --max-workers 2")
    bench.start(server)
    models = {SMOLLM2: smollm2_path(), GEMMA: gemma}
    rates = Figure("two_models_rates", "4. Two models at once: each one's decode rate",
                   "tok/s", None)
    total = Figure("two_models_sum", "4. Two models at once: the sum of each one's rate over "
                   "its rate alone", "x", None,
                   note=("alone on the server: the other model loaded and idle, so a lone stream "
                         "that gets every core is the reference; alone in process: llama-cpp-python "
                         "with every core"))
    try:
        def alone(model):
            return bench.stream(API, model=model, path=models[model], url=server.url)

        for model, path in models.items():
            alone(model)  # load both workers
            bench.stream(IN_PROCESS, tokens=4, path=path)
        time.sleep(SETTLE_SECONDS)
        tasks = ["in-process", "alone", "pair"]
        for r in range(bench.rounds):
            for task in rotated(tasks, r):
                if task == "in-process":
                    for model, path in models.items():
                        rates.add(f"{model}, alone in process",
                                  bench.stream(IN_PROCESS, path=path).decode_rate)
                elif task == "alone":
                    for model in models:
                        rates.add(f"{model}, alone on the server", alone(model).decode_rate)
                else:
                    for model, rate in pair_rates(bench, server.url, models).items():
                        rates.add(f"{model}, both at once", rate)
            for alone_where in ("on the server", "in process"):
                total.add(f"sum of the pair over each alone {alone_where}", sum(
                    rates.values[f"{m}, both at once"][-1] / rates.values[f"{m}, alone {alone_where}"][-1]
                    for m in models))
            bench.log(f"two models, round {r + 1}: sum " + ", ".join(
                f"{label} {values[-1]:.2f}x" for label, values in total.values.items()))
    finally:
        server.stop()
    return [rates, total]


def pair_rates(bench: Bench, url: str, models: dict) -> dict[str, float]:
    """Each model's decode rate while the other decodes the whole time: a model whose
    measured stream ends first keeps streaming (unmeasured) until the other's ends."""
    done = {model: threading.Event() for model in models}

    def run(model):
        measured = bench.stream(API, model=model, path=models[model], url=url)
        done[model].set()
        while not all(event.is_set() for event in done.values()):
            bench.stream(API, model=model, path=models[model], url=url)
        return measured.decode_rate

    with ThreadPoolExecutor(len(models)) as pool:
        futures = {model: pool.submit(run, model) for model in models}
        return {model: future.result() for model, future in futures.items()}


def n_choices(bench: Bench) -> list[Figure]:
    label = "n=4 in one request"
    figure = Figure("n4", "8. n=4 in one request against 4 requests: aggregate rate", "tok/s",
                    "4 concurrent requests")
    url = bench.servers[API].url + "/v1/completions"
    plain = bench.body(stream=False)

    def one(n):
        began = time.perf_counter()
        answer = request(bench.client, url, {**plain, "n": n})
        tokens = answer["usage"]["completion_tokens"]
        if tokens != n * bench.tokens or len(answer["choices"]) != n:
            raise AssertionError(f"n={n} answered {tokens} tokens in {len(answer['choices'])} "
                                 f"choices, not {n * bench.tokens} in {n}")
        return began, time.perf_counter()

    for r in range(bench.rounds):
        for task in rotated([label, figure.reference], r):
            if task == label:
                began, ended = one(4)
            else:
                with ThreadPoolExecutor(4) as pool:
                    spans = list(pool.map(lambda _: one(1), range(4)))
                began, ended = min(s[0] for s in spans), max(s[1] for s in spans)
            figure.add(task, 4 * bench.tokens / (ended - began))
    bench.log(f"n=4: {figure.ratio(label):.2f}x of 4 requests")
    return [figure]
