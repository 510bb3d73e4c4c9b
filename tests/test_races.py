"""Races and edge cases in scheduling, cancellation and the worker protocol."""

from __future__ import annotations

import json
import re
import subprocess
import time

import httpx
import pytest

import os

USER = [{"role": "user", "content": "tick tock"}]


def chat(server, model: str, max_tokens: int = 10, **extra) -> httpx.Response:
    return httpx.post(server.v1 + "/chat/completions", timeout=60,
                      json={"model": model, "messages": USER, "max_tokens": max_tokens, **extra})


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_shutdown_while_a_model_loads_ends_its_worker(start_server, models_dir):
    (models_dir / "sluggish.echo").write_text(json.dumps({"load_delay": 1.5}))
    with start_server() as server:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up during the load
            httpx.post(server.v1 + "/chat/completions", timeout=0.3,
                       json={"model": "sluggish", "messages": USER, "max_tokens": 1})
        pid = int(re.search(r"started worker pid=(\d+)", server.log()).group(1))
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("the server hung on shutdown while a model was loading")
        assert wait_for(lambda: not pid_alive(pid), timeout=5), "the loading worker outlived the server"
