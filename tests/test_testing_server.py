"""`llama_api.testing.serve`, the real-server helper every end-to-end test uses."""

from __future__ import annotations

import socket

import httpx

import llama_api.testing.server as server_module
from llama_api.testing import serve


def test_a_port_taken_before_the_server_binds_it_is_replaced_by_another(models_dir, monkeypatch):
    # Another process takes the chosen port first (a parallel test run, a client's outgoing
    # connection): the server can't bind it, and serve() starts it again elsewhere.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        chosen = iter([port])
        any_free = server_module.free_port
        monkeypatch.setattr(server_module, "free_port", lambda: next(chosen, None) or any_free())
        with serve("--models-dir", str(models_dir), env={"LLAMA_API_PLUGINS": "echo"}) as server:
            assert not server.url.endswith(f":{port}")
            listing = httpx.get(server.v1 + "/models", timeout=30).json()
            assert "fast" in {model["id"] for model in listing["data"]}
