"""Benchmark: does batching across requests pay, and does it cost a lone request anything?

Runs in-process, calling the plugin's hooks from threads as the worker does.

    python plugins/embeddings/bench_batching.py [--threads 2] [--rounds 5] [--model PATH]
    python plugins/embeddings/bench_batching.py --worker   # through a real worker subprocess

Prints:
- one request carrying N texts (the best case for throughput),
- N concurrent one-text requests (should reach >= 0.8x of the above),
- N one-text requests one after another (what no batching at all gives),
- one-text latency through the batcher vs the same work done directly (unbatched).
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time

WORDS = [
    "the", "a", "model", "server", "request", "vector", "text", "batch", "thread", "token",
    "embedding", "sentence", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "cat",
    "sits", "on", "mat", "machine", "learning", "small", "fast", "slow", "large", "data",
    "language", "search", "query", "passage", "document", "answer", "question", "river",
    "mountain", "city", "night", "day",
]


def make_texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 24))) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (n_threads)")
    parser.add_argument("--texts", type=int, default=64, help="texts per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default=None, help="model folder (default: packaged MiniLM)")
    parser.add_argument("--worker", action="store_true",
                        help="send requests to a worker subprocess over its pipe, as the server does")
    args = parser.parse_args()

    import llama_api_embeddings as plugin
    from llama_api.contract.records import EmbedRequest, LoadContext, ModelSpec

    if args.model:
        spec = ModelSpec(id="bench", backend="transformers", path=args.model)
    else:
        spec = next(s for s in plugin.discover_models("/nonexistent") if s.id == "all-MiniLM-L6-v2")
    texts = make_texts(args.texts)
    if args.worker:
        spec.plugin = "embeddings"
        return bench_worker(spec, texts, args)
    model = plugin.load_model(spec=spec, context=LoadContext(n_threads=args.threads))

    def one_request() -> float:
        started = time.perf_counter()
        plugin.embed(model=model, request=EmbedRequest(input=texts))
        return time.perf_counter() - started

    def concurrent() -> tuple[float, list[int]]:
        barrier = threading.Barrier(len(texts) + 1)
        sizes = [0] * len(texts)

        def call(i):
            barrier.wait()
            result = plugin.embed(model=model, request=EmbedRequest(input=[texts[i]]))
            sizes[i] = result.batch_size

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        return time.perf_counter() - started, sizes

    def sequential() -> float:
        started = time.perf_counter()
        for text in texts:
            plugin.embed(model=model, request=EmbedRequest(input=[text]))
        return time.perf_counter() - started

    def latency_batched(text: str) -> float:
        started = time.perf_counter()
        plugin.embed(model=model, request=EmbedRequest(input=[text]))
        return time.perf_counter() - started

    def latency_direct(text: str) -> float:
        # The same work without the batcher: tokenize and run the model in this thread.
        # (What the backend's compute thread runs, called directly.)
        started = time.perf_counter()
        model._compute([text])
        return time.perf_counter() - started

    one_request(), concurrent(), sequential()  # warm up
    single, together, alone, batch_sizes = [], [], [], []
    for _ in range(args.rounds):
        single.append(one_request())
        elapsed, sizes = concurrent()
        together.append(elapsed)
        batch_sizes.extend(sizes)
        alone.append(sequential())
    n = len(texts)
    best = n / statistics.median(single)
    conc = n / statistics.median(together)
    seq = n / statistics.median(alone)
    print(f"model={spec.id} threads={args.threads} texts={n} rounds={args.rounds}")
    print(f"one request x {n} texts      : {best:7.1f} texts/s")
    # Rounds alternate the modes, so a ratio per round is robust to a machine's drifting load.
    paired = statistics.median(s / t for s, t in zip(single, together))
    print(f"{n} concurrent 1-text requests: {conc:7.1f} texts/s  ({conc / best:.2f}x of one "
          f"request; per-round median {paired:.2f}x; mean batch "
          f"{statistics.mean(batch_sizes):.1f}, max {max(batch_sizes)})")
    print(f"{n} sequential 1-text requests: {seq:7.1f} texts/s  ({seq / best:.2f}x)")

    # Alternate blocks of each kind (order swapped every round), with a pause between
    # blocks: OpenMP worker threads spin for a while after a parallel region, and each
    # calling thread has its own team. Report the median of per-block ratios.
    blocks = {latency_batched: [], latency_direct: []}
    probe = texts[:16]
    for round_ in range(args.rounds * 3):
        order = (latency_batched, latency_direct)
        for measure in order if round_ % 2 else order[::-1]:
            time.sleep(0.1)
            measure(probe[0])
            blocks[measure].append(statistics.median(measure(text) for text in probe))
    b = statistics.median(blocks[latency_batched]) * 1000
    d = statistics.median(blocks[latency_direct]) * 1000
    ratio = statistics.median(x / y for x, y in zip(blocks[latency_batched],
                                                     blocks[latency_direct]))
    print(f"1-text latency, median: batched {b:.2f} ms, unbatched {d:.2f} ms "
          f"(per-block ratio {ratio:.3f})")
    plugin.unload_model(model=model)


def bench_worker(spec, texts, args) -> None:
    """The same throughput comparison through a worker subprocess (pipe, msgpack frames)."""
    import anyio

    from llama_api.contract.records import EmbedRequest
    from llama_api.testing.conformance import running_worker

    async def main():
        async with running_worker(spec, n_threads=args.threads) as worker:
            async def one_request():
                started = time.perf_counter()
                await worker.embed(EmbedRequest(input=texts))
                return time.perf_counter() - started

            async def concurrent():
                sizes = []

                async def call(text):
                    result = await worker.embed(EmbedRequest(input=[text]))
                    sizes.append(result.batch_size)

                started = time.perf_counter()
                async with anyio.create_task_group() as group:
                    for text in texts:
                        group.start_soon(call, text)
                return time.perf_counter() - started, sizes

            await one_request(), await concurrent()  # warm up
            single, together, batch_sizes = [], [], []
            for _ in range(args.rounds):
                single.append(await one_request())
                elapsed, sizes = await concurrent()
                together.append(elapsed)
                batch_sizes.extend(sizes)
            return single, together, batch_sizes

    single, together, batch_sizes = anyio.run(main)
    n = len(texts)
    best = n / statistics.median(single)
    conc = n / statistics.median(together)
    paired = statistics.median(s / t for s, t in zip(single, together))
    print(f"worker subprocess, model={spec.id} threads={args.threads} texts={n}")
    print(f"one request x {n} texts      : {best:7.1f} texts/s")
    print(f"{n} concurrent 1-text requests: {conc:7.1f} texts/s  ({conc / best:.2f}x; per-round "
          f"median {paired:.2f}x; mean batch {statistics.mean(batch_sizes):.1f}, "
          f"max {max(batch_sizes)})")


if __name__ == "__main__":
    main()
