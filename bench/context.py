"""What every figure shares: the run's settings, the servers up for the whole run, the
in-process models, and the ways to send one measured request to any of them."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from threading import Event

import httpx

from bench.models import SMOLLM2, end_of_generation_ids, smollm2_path
from bench.servers import Server
from bench.streams import InProcess, Stream, completion_body, stream

API = "llama-api"
CPP = "llama-server"
PY = "llama_cpp.server"
IN_PROCESS = "in-process llama-cpp-python"


@dataclass
class Bench:
    rounds: int
    tokens: int
    threads: int                 # compute threads for in-process and llama_cpp.server
    concurrency: list[int]
    overhead_requests: int
    llama_server_binary: Path
    servers: dict[str, Server] = field(default_factory=dict)  # up for the whole run
    commands: dict[str, str] = field(default_factory=dict)    # every server started: its command
    skipped: dict[str, str] = field(default_factory=dict)     # server or figure -> why
    client: httpx.Client = field(default_factory=lambda: httpx.Client(
        limits=httpx.Limits(max_connections=128, max_keepalive_connections=128)))
    _in_process: dict[Path, InProcess] = field(default_factory=dict)

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    def start(self, server: Server) -> float:
        self.commands[server.name] = server.command()
        seconds = server.start()
        self.log(f"{server.name} ready in {seconds:.2f} s on {server.url}")
        return seconds

    def in_process(self, path: Path) -> InProcess:
        if path not in self._in_process:
            self._in_process[path] = InProcess(path, self.threads)
        return self._in_process[path]

    def compared(self) -> list[str]:
        """The servers up for the whole run, then in-process llama-cpp-python."""
        return [*self.servers, IN_PROCESS]

    def body(self, model: str = SMOLLM2, tokens: int | None = None, path: Path | None = None,
             **more) -> dict:
        stop_ids = end_of_generation_ids(path or smollm2_path())
        return completion_body(model, tokens or self.tokens, stop_ids, **more)

    def stream(self, label: str, tokens: int | None = None, model: str = SMOLLM2,
               path: Path | None = None, url: str | None = None,
               on_first: Event | None = None) -> Stream:
        """One greedy completion of `tokens` (default: the run's) from `label`'s server (or
        `url`), or in process; its token count checked."""
        tokens = tokens or self.tokens
        path = path or smollm2_path()
        if label == IN_PROCESS:
            return self.in_process(path).stream(tokens, end_of_generation_ids(path))
        url = url or self.servers[label].url
        return stream(self.client, url, self.body(model, tokens, path), tokens, on_first)

    def concurrent(self, label: str, count: int) -> list[Stream]:
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(lambda _: self.stream(label), range(count)))


def rotated(labels: list[str], round_index: int) -> list[str]:
    """The round's order: each round starts one further along, so no server always goes
    first (or always follows the same one)."""
    shift = round_index % len(labels)
    return labels[shift:] + labels[:shift]


def aggregate_rate(streams: list[Stream]) -> float:
    """Every stream's tokens over the time from the first request sent to the last token."""
    began = min(s.sent for s in streams)
    ended = max(s.last for s in streams)
    return sum(s.tokens for s in streams) / (ended - began)
