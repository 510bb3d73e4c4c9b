"""Soak: mixed requests against a real server for a long time, watching for leaks.

    python bench/soak.py OUT_DIR [--duration 3600] [--sample-every 5] [--clients 6] [--gguf]

Clients send chats, streams, streams they cancel after the first chunk, embeddings and
requests that fail (an unknown model, a bad body, a model that can't load) across more
models than --max-workers 2 holds, so that models are swapped all the time. Every few
seconds the server's and its workers' RSS and open file descriptors (/proc/PID/fd) are
sampled. OUT_DIR gets soak.csv and soak.png. The exit status is 1 when the server's RSS or
fd count grows faster than --max-rss-slope (MB per hour) or --max-fd-slope (per hour),
fitted over the samples after the first fifth (the warm-up), or when a request got a 5xx
or no answer; 0 otherwise. Echo models by default (the test backend); --gguf adds a tiny
GGUF model (llama.cpp) to the mix.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from llama_api.testing import serve

ECHO_MODELS = {"a": {"delay": 0.005}, "b": {"delay": 0.005}, "c": {"delay": 0.01, "slots": 2},
               "broken": {"fail_load": "weights are corrupt"}}
SWAPPED = ["a", "b", "c"]
COLUMNS = ["seconds", "server_rss_mb", "server_fds", "workers", "workers_rss_mb",
           "workers_fds", "requests", "unexpected"]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Soak:
    def __init__(self, server, models: list[str], duration: float):
        self.server = server
        self.models = models
        self.stop_at = time.monotonic() + duration
        self.requests = 0
        self.unexpected: list[str] = []

    def note(self, what: str, status: int | None, expected: set[int]) -> None:
        self.requests += 1
        if status not in expected:
            self.unexpected.append(f"{what}: {status}")

    async def chat(self, client, rng, stream: bool, cancel: bool) -> None:
        model = rng.choice(self.models)
        body = {"model": model, "max_tokens": rng.randint(1, 40), "stream": stream,
                "messages": [{"role": "user", "content": "soak " * rng.randint(1, 20)}]}
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if cancel and line.startswith("data: "):
                    break  # hang up mid-stream
        self.note(f"chat {model} stream={stream} cancel={cancel}", response.status_code, {200})

    async def embed(self, client, rng) -> None:
        response = await client.post("/v1/embeddings", json={
            "model": rng.choice(SWAPPED), "input": ["soak"] * rng.randint(1, 8)})
        self.note("embeddings", response.status_code, {200})

    async def failing(self, client, rng) -> None:
        kind = rng.choice(["unknown", "bad body", "broken"])
        if kind == "unknown":
            response = await client.post("/v1/chat/completions", json={
                "model": "no-such-model", "messages": [{"role": "user", "content": "x"}]})
            self.note(kind, response.status_code, {404})
        elif kind == "bad body":
            response = await client.post("/v1/chat/completions", content=b'{"model": 1',
                                         headers={"content-type": "application/json"})
            self.note(kind, response.status_code, {400})
        else:
            response = await client.post("/v1/chat/completions", json={
                "model": "broken", "messages": [{"role": "user", "content": "x"}]})
            self.note(kind, response.status_code, {503})

    async def client_loop(self, seed: int) -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient(base_url=self.server.url, timeout=120) as client:
            while time.monotonic() < self.stop_at:
                action = rng.choices(["chat", "stream", "cancel", "embed", "fail"],
                                     weights=[4, 3, 2, 1, 1])[0]
                try:
                    if action == "embed":
                        await self.embed(client, rng)
                    elif action == "fail":
                        await self.failing(client, rng)
                    else:
                        await self.chat(client, rng, stream=action != "chat",
                                        cancel=action == "cancel")
                except httpx.HTTPError as exc:  # no answer at all: lost
                    self.requests += 1
                    self.unexpected.append(f"{action}: lost ({exc!r})")

    async def run(self, clients: int) -> None:
        await asyncio.gather(*(self.client_loop(seed) for seed in range(clients)))


def sample_loop(soak: Soak, pid: int, every: float, rows: list, done: threading.Event) -> None:
    started = time.monotonic()
    while not done.is_set():
        workers = children(pid)
        rows.append([round(time.monotonic() - started, 1), round(rss_mb(pid), 2), fds(pid),
                     len(workers), round(sum(rss_mb(w) for w in workers), 2),
                     sum(fds(w) for w in workers), soak.requests, len(soak.unexpected)])
        done.wait(every)


def slope_per_hour(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (seconds), per hour."""
    n = len(xs)
    if n < 2:
        return 0.0
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    var = sum((x - mean_x) ** 2 for x in xs)
    if not var:
        return 0.0
    return 3600 * sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / var


def plot(rows: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [row[0] / 60 for row in rows]
    figure, (memory, files) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    memory.plot(minutes, [r[1] for r in rows], label="server RSS (MB)")
    memory.plot(minutes, [r[4] for r in rows], label="workers' RSS (MB)")
    memory.set_ylabel("MB")
    memory.legend()
    files.plot(minutes, [r[2] for r in rows], label="server open fds")
    files.plot(minutes, [r[5] for r in rows], label="workers' open fds")
    files.set_ylabel("fds")
    files.set_xlabel("minutes")
    files.legend()
    figure.suptitle("llama-api soak: memory and file descriptors")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def models_folder(folder: Path, gguf: bool) -> list[str]:
    for name, options in ECHO_MODELS.items():
        (folder / f"{name}.echo").write_text(json.dumps(options))
    if not gguf:
        return list(SWAPPED)
    from llama_api_llamacpp.tiny import write_tiny_gguf

    write_tiny_gguf(folder / "tiny.gguf")
    return [*SWAPPED, "tiny"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--duration", type=float, default=3600, help="seconds (default 3600)")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds")
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--max-rss-slope", type=float, default=50.0,
                        help="server RSS growth allowed, MB per hour (default 50)")
    parser.add_argument("--max-fd-slope", type=float, default=20.0,
                        help="server fd growth allowed, per hour (default 20)")
    parser.add_argument("--gguf", action="store_true", help="add a tiny GGUF model (llama.cpp)")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        models = models_folder(Path(scratch), args.gguf)
        plugins = "echo,llamacpp" if args.gguf else "echo"
        with serve("--models-dir", scratch, "--max-workers", "2",
                   env={"LLAMA_API_PLUGINS": plugins}) as server:
            soak = Soak(server, models, args.duration)
            rows: list = []
            done = threading.Event()
            sampler = threading.Thread(target=sample_loop, daemon=True, args=(
                soak, server.process.pid, args.sample_every, rows, done))
            sampler.start()
            asyncio.run(soak.run(args.clients))
            done.set()
            sampler.join()

    with open(args.out_dir / "soak.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    plot(rows, args.out_dir / "soak.png")

    steady = rows[len(rows) // 5:]
    seconds = [r[0] for r in steady]
    rss_slope = slope_per_hour(seconds, [r[1] for r in steady])
    fd_slope = slope_per_hour(seconds, [r[2] for r in steady])
    print(f"SOAK: {soak.requests} requests over {args.duration:.0f}s, "
          f"{len(soak.unexpected)} unexpected (5xx or lost), server RSS "
          f"{rows[0][1]:.0f} -> {rows[-1][1]:.0f} MB ({rss_slope:+.1f} MB/h, limit "
          f"{args.max_rss_slope}), fds {rows[0][2]} -> {rows[-1][2]} ({fd_slope:+.1f}/h, limit "
          f"{args.max_fd_slope}); {args.out_dir / 'soak.csv'}, {args.out_dir / 'soak.png'}")
    for line in soak.unexpected[:10]:
        print("  unexpected:", line)
    failed = rss_slope > args.max_rss_slope or fd_slope > args.max_fd_slope or soak.unexpected
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
