"""Start a real `llama-api serve` subprocess on a free port for end-to-end tests."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from llama_api.testing.processes import end


@contextmanager
def held_request(server: Server, path: str, body: dict):
    """POST `body` to `path` on a raw connection that stays open for the block; the client
    hangs up when the block ends. The test picks the moment (after the server has queued the
    request, or begun its load), not a client timeout."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    data = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
                           f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                           f"\r\n".encode() + data)
        yield connection


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen
    log_path: Path
    log_file: IO[bytes] | None = field(default=None, repr=False)  # closed when it stops

    @property
    def v1(self) -> str:
        """The base URL an OpenAI client takes."""
        return self.url + "/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/health", timeout=10) as response:
            return json.loads(response.read())


class PortTaken(Exception):
    """The free port was taken between `free_port` and the server's bind."""


PORT_TRIES = 3


@contextmanager
def serve(*args: str, env: dict[str, str] | None = None, startup_timeout: float = 60.0,
          address_space: int | None = None):
    """Run `python -m llama_api serve --port <free> *args` until the block ends.

    A port is free when chosen, but another process (a parallel test run, any client's
    outgoing connection) may take it before the server binds: then it starts again on
    another port. `address_space`: bytes of virtual memory the server and each of its
    workers may map (RLIMIT_AS): a test of a request that could exhaust the machine fails
    instead of waking the kernel's OOM killer."""
    for _ in range(PORT_TRIES):
        server = start(args, env, address_space)
        try:
            wait_until_ready(server, startup_timeout)
            break
        except PortTaken:
            stop(server)
        except BaseException:
            stop(server)
            raise
    else:
        raise RuntimeError(f"no free port in {PORT_TRIES} tries:\n{server.log()}")
    try:
        yield server
    finally:
        stop(server)


def start(args, env: dict[str, str] | None, address_space: int | None = None) -> Server:
    port = free_port()
    # Kept after the block, for a failing test to read; closed in `stop`.
    log_file = tempfile.NamedTemporaryFile(prefix="llama-api-", suffix=".log", delete=False)  # noqa: SIM115

    def limit() -> None:  # in the child, before exec; its workers inherit it
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    process = subprocess.Popen(
        [sys.executable, "-m", "llama_api", "serve", "--port", str(port), *args],
        stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        preexec_fn=limit if address_space else None,  # noqa: PLW1509 - no threads to fear here
    )
    return Server(url=f"http://127.0.0.1:{port}", process=process, log_path=Path(log_file.name),
                  log_file=log_file)


def wait_until_ready(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            log = server.log()
            if "address already in use" in log.lower():
                raise PortTaken(log)
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{log}")
        try:
            server.health()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in {timeout}s:\n{server.log()}") from None
            time.sleep(0.05)


def stop(server: Server) -> None:
    end(server.process)
    if server.log_file is not None:
        server.log_file.close()
