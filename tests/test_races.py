"""Races and edge cases in scheduling, cancellation and the worker protocol."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import httpx
import pytest

from llama_api.testing import pid_exists, wait_for
from llama_api_echo import USER, chat, read_events


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
        assert wait_for(lambda: not pid_exists(pid), timeout=5), "the loading worker outlived the server"


def test_streaming_client_that_hangs_up_while_queued_leaves_the_queue(start_server, events_file):
    from concurrent.futures import ThreadPoolExecutor

    with start_server("--max-queue", "1") as server:
        chat(server, "slow", 1)
        events_file.unlink()
        with ThreadPoolExecutor(1) as pool:
            busy = pool.submit(chat, server, "slow", 50)  # holds the one slot ~2.5 s
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
        starts = [e for e in read_events(events_file) if e["event"] == "start"]
    assert len(starts) == 2, "the abandoned stream still generated"


class FakeWorker:
    """Stands in for WorkerProcess in scheduler-only tests; `script` says how each start goes."""

    script: list[str] = []
    started: list["FakeWorker"] = []

    def __init__(self, spec, n_threads, on_exit):
        self.spec, self.on_exit = spec, on_exit
        self.slots, self.info, self.pid, self.alive = 1, {}, 0, False

    async def start(self, task_group):
        FakeWorker.started.append(self)
        self.pid = len(FakeWorker.started)
        self.alive = True
        if FakeWorker.script.pop(0) == "dies right after loading":
            # The worker said Loaded and then died; the reader task saw both before
            # start() resumed: on_exit ran while the entry had no worker yet.
            self.alive = False
            self.on_exit(self)

    async def stop(self, grace: float = 5.0):
        self.alive = False


def run_scheduler(monkeypatch, script, body, **settings):
    import anyio

    from llama_api import scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "WorkerProcess", FakeWorker)
    FakeWorker.script, FakeWorker.started = list(script), []

    async def main():
        async with scheduler_module.Scheduler(scheduler_module.Settings(**settings)).running() as s:
            with anyio.fail_after(5):
                return await body(s)

    return anyio.run(main)


def test_a_worker_that_dies_right_after_loading_is_not_kept(monkeypatch):
    from llama_api import errors
    from llama_api.types import ModelSpec

    spec = ModelSpec(id="m", backend="echo")

    async def body(scheduler):
        try:
            async with scheduler.lease(spec):
                pass
        except errors.BackendUnavailable:
            pass  # failing the request that saw the death is fine
        async with scheduler.lease(spec) as worker:
            return worker.alive

    assert run_scheduler(monkeypatch, ["dies right after loading", "ok", "ok"], body), \
        "a dead worker was kept as the model's worker"


def children(pid: int) -> list[int]:
    found = []
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                with open(f"/proc/{stat}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(stat))
    return found


def test_a_spec_the_worker_pipe_cannot_carry_leaves_no_process_behind(start_server, tmp_path,
                                                                      models_dir):
    config = tmp_path / "models.toml"
    config.write_text(f'[models.huge]\nbackend = "echo"\npath = "{models_dir / "fast.echo"}"\n'
                      f'options = {{ n_ctx = {2**70} }}\n')
    with start_server("--config", str(config)) as server:
        for _ in range(2):
            reply = chat(server, "huge", 1)
            assert reply.status_code == 503, reply.text
            assert reply.json()["error"]["code"] == "model_load_failed"
        assert wait_for(lambda: children(server.process.pid) == [], timeout=5), \
            f"worker processes left behind: {children(server.process.pid)}"


def test_a_frame_that_does_not_decode_fails_its_request_instead_of_hanging(server):
    reply = httpx.post(server.v1 + "/chat/completions", timeout=15,
                       json={"model": "fast", "messages": [{"role": "user", "content": "MALFORMED"}]})
    assert reply.status_code == 503, reply.text
    assert reply.json()["error"]["type"] == "server_error"
    assert chat(server, "fast", 2).status_code == 200  # the model still serves


def test_embeddings_client_that_hangs_up_while_queued_leaves_the_queue(start_server):
    from concurrent.futures import ThreadPoolExecutor

    with start_server("--max-queue", "1") as server:
        chat(server, "slow", 1)
        with ThreadPoolExecutor(1) as pool:
            busy = pool.submit(chat, server, "slow", 50)  # holds the one slot ~2.5 s
            time.sleep(0.3)
            with pytest.raises(httpx.ReadTimeout):  # queued behind it; gives up
                httpx.post(server.v1 + "/embeddings", timeout=0.4,
                           json={"model": "slow", "input": "hello"})
            time.sleep(0.3)
            assert not busy.done()
            queued = chat(server, "slow", 1)  # the queue's one place must be free again
            assert busy.result().status_code == 200
        assert queued.status_code == 200, queued.text


def test_a_streamed_token_is_not_held_back_while_the_backend_stalls(start_server, models_dir):
    # Two words come at once, then the backend pauses 1.5 s before the third.
    (models_dir / "stalling.echo").write_text(json.dumps({"stall": 1.5, "stall_after": 2}))
    with start_server() as server:
        chat(server, "stalling", 1)
        started = time.monotonic()
        arrivals = []
        with httpx.stream("POST", server.v1 + "/chat/completions", timeout=30,
                          json={"model": "stalling", "messages": USER, "max_tokens": 3,
                                "stream": True}) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    text = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                    arrivals.extend([time.monotonic() - started] * len(text.split()))
    assert len(arrivals) == 3
    assert arrivals[1] < 0.75, f"the second word waited for the third: {arrivals}"
