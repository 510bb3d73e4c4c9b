"""Start, watch and stop the servers the suite compares, each a subprocess on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import packages
from bench.models import CACHE
from llama_api.testing.processes import end

BUILD_SCRIPT = Path(__file__).with_name("build_llama_server.sh")
PYTHON_SERVER_EXTRAS = {"fastapi": "fastapi", "sse_starlette": "sse-starlette",
                        "starlette_context": "starlette-context",
                        "pydantic_settings": "pydantic-settings"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def own_rss(pid: int) -> int | None:
    """VmRSS of one process (not its children), in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class Server:
    """One running server: `argv` is the exact command, `ready_path` answers 200 once it
    serves."""

    name: str
    argv: list[str]
    ready_path: str
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    started: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return CACHE / "logs" / f"{self.name}-{self.port}.log"

    def command(self) -> str:
        here = str(Path.cwd()) + "/"
        shown = [a.replace(here, "").replace(str(Path.home()), "~") for a in self.argv]
        env = " ".join(f"{k}={v}" for k, v in self.env.items())
        return (env + " " if env else "") + " ".join(shown)

    def start(self, timeout: float = 300.0) -> float:
        """Start it and wait until it serves; returns the seconds that took."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **self.env})
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; "
                                   f"log: {self.log_path}\n{self.log_tail()}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=5).status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready in {timeout} s; log: {self.log_path}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def rss(self) -> int | None:
        return own_rss(self.process.pid) if self.process else None

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        end(self.process)


def llama_api(models_dir: Path, *args: str, plugins: str = "llamacpp", name: str = "llama-api",
              port: int | None = None) -> Server:
    """`llama-api serve` with its default thread budget (the cores shared by its workers)."""
    server = Server(name=name, ready_path="/health", env={"LLAMA_API_PLUGINS": plugins},
                    argv=[])
    server.port = port or server.port
    server.argv = [sys.executable, "-m", "llama_api", "serve", "--port", str(server.port),
                   "--models-dir", str(models_dir), "--log-level", "warning", *args]
    return server


def llama_server_binary() -> Path:
    """llama.cpp's llama-server, built by bench/build_llama_server.sh (reused when built)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "build.log").open("a") as log:
        done = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=log,
                              check=False, text=True, env={**os.environ, "LLAMA_API_BENCH_CACHE": str(CACHE)})
    if done.returncode != 0:
        raise SystemExit(f"building llama-server failed; see {CACHE}/build.log")
    return Path(done.stdout.strip().splitlines()[-1])


def llama_server(binary: Path, gguf: Path, model_id: str, threads: int | None, parallel: int,
                 n_ctx: int = 2048, name: str = "llama-server") -> Server:
    """llama.cpp's server on one GGUF; `threads=None` keeps its default thread count."""
    server = Server(name=name, ready_path="/health", argv=[])
    server.argv = [str(binary), "-m", str(gguf), "--alias", model_id, "--host", "127.0.0.1",
                   "--port", str(server.port), "-np", str(parallel),
                   "-c", str(n_ctx * parallel), "--no-webui"]
    if threads is not None:
        server.argv += ["-t", str(threads)]
    return server


def python_server_ready() -> str | None:
    """None when `python -m llama_cpp.server` can run; otherwise why not. Installs its
    missing extras (llama-cpp-python[server]) into this environment once."""
    return packages.ensure(PYTHON_SERVER_EXTRAS)


def python_server(gguf: Path, model_id: str, threads: int, n_ctx: int = 2048) -> Server:
    """llama-cpp-python's own server: one request at a time; `interrupt_requests` off so
    that a new request queues instead of cutting the running stream short."""
    server = Server(name="llama_cpp.server", ready_path="/v1/models", argv=[])
    server.argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
                   "--model_alias", model_id, "--host", "127.0.0.1", "--port", str(server.port),
                   "--n_threads", str(threads), "--n_ctx", str(n_ctx),
                   "--interrupt_requests", "False"]
    return server
