"""Start a real `llama-api serve` subprocess on a free port for end-to-end tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen
    log_path: Path

    @property
    def v1(self) -> str:
        """The base URL an OpenAI client takes."""
        return self.url + "/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/health", timeout=10) as response:
            return json.loads(response.read())


@contextmanager
def serve(*args: str, env: dict[str, str] | None = None, startup_timeout: float = 60.0):
    """Run `python -m llama_api serve --port <free> *args` until the block ends."""
    port = free_port()
    # Kept after the block, for a failing test to read; closed in the finally below.
    log_file = tempfile.NamedTemporaryFile(prefix="llama-api-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_api", "serve", "--port", str(port), *args],
        stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
    )
    server = Server(url=f"http://127.0.0.1:{port}", process=process, log_path=Path(log_file.name))
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
            try:
                server.health()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not ready in {startup_timeout}s:\n{server.log()}")
                time.sleep(0.05)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log_file.close()
