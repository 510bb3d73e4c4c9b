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


def test_streaming_client_that_hangs_up_while_queued_leaves_the_queue(start_server, events_file):
    from concurrent.futures import ThreadPoolExecutor

    with start_server("--max-queue", "1") as server:
        chat(server, "slow", 1)
        events_file.unlink()
        with ThreadPoolExecutor(1) as pool:
            busy = pool.submit(chat, server, "slow", 60)  # holds the one slot ~3 s
            time.sleep(0.3)
            with pytest.raises(httpx.ReadTimeout):  # queued behind it; gives up
                with httpx.stream("POST", server.v1 + "/chat/completions", timeout=0.4,
                                  json={"model": "slow", "messages": USER, "max_tokens": 50,
                                        "stream": True}) as response:
                    response.read()
            time.sleep(0.3)
            assert not busy.done()
            queued = chat(server, "slow", 1)  # the queue's one place must be free again
            assert busy.result().status_code == 200
        assert queued.status_code == 200, queued.text
        time.sleep(0.5)
    from llama_api_echo import read_events
    starts = [e for e in read_events(events_file) if e["event"] == "start"]
    assert len(starts) == 2, "the abandoned stream still generated"
