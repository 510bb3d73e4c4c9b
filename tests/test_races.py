"""Races and edge cases in scheduling and cancellation: clients that hang up while their
request is queued or its model loads, a shutdown mid-load, a frame or a spec the worker pipe
can't carry, a backend that stalls mid-stream; and GET /admin/models/ID while models load and
unload: never a 5xx, and each answer describes one consistent entry (the fuzzer once saw a
500 there while its admin actions churned models).

The tests that need a small queue and no fresh server share `queue_of_one`.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import anyio
import httpx
import pytest
from support import USER, chat, echo_server, model_status, read_events, wait_for_start

from llama_api.api.admin import model_status as admin_model_status
from llama_api.contract.records import ModelSpec
from llama_api.scheduling.entries import Entry, Settings
from llama_api.scheduling.scheduler import Scheduler
from llama_api.testing import pid_exists, wait_for
from llama_api.testing.processes import children
from llama_api.testing.server import held_request
from llama_api.workers.handle import WorkerHandle


@pytest.fixture(scope="module")
def queue_of_one(tmp_path_factory):
    """A server with `--max-queue 1` on fast, slow and stalling echo models; (server, events)."""
    folder = tmp_path_factory.mktemp("queue-of-one")
    models = {"fast": {}, "slow": {"delay": 0.05},
              # Two words come at once, then the backend pauses 1.5 s before the third.
              "stalling": {"stall": 1.5, "stall_after": 2}}
    with echo_server(folder, "--max-queue", "1", models=models,
                     events=folder / "events.jsonl") as server:
        yield server, server.events


def test_shutdown_while_a_model_loads_ends_its_worker(start_server, models_dir):
    (models_dir / "sluggish.echo").write_text(json.dumps({"load_delay": 2}))
    with start_server() as server:
        with held_request(server, "/v1/chat/completions",
                  {"model": "sluggish", "messages": USER, "max_tokens": 1}):
            assert wait_for(lambda: len(children(server.process.pid)) == 1, timeout=5)
        # the client gave up during the load
        (pid,) = children(server.process.pid)  # the worker, still loading
        assert model_status(server, "sluggish")["state"] == "loading"
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("the server hung on shutdown while a model was loading")
        assert wait_for(lambda: not pid_exists(pid), timeout=5), "the loading worker outlived the server"


def test_streaming_client_that_hangs_up_while_queued_leaves_the_queue(queue_of_one):
    server, events_file = queue_of_one
    chat(server, "slow", 1)
    events_file.unlink(missing_ok=True)
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(chat, server, "slow", 60)  # holds the one slot ~3 s
        assert wait_for_start(events_file, "slow"), "the busy request never started"
        with held_request(server, "/v1/chat/completions",  # queued behind it; gives up
                  {"model": "slow", "messages": USER, "max_tokens": 50, "stream": True}):
            assert wait_for(lambda: model_status(server, "slow")["queued"] == 1), "never queued"
        assert wait_for(lambda: model_status(server, "slow")["queued"] == 0), \
            "the stream that hung up kept its place in the queue"
        assert not busy.done()
        queued = chat(server, "slow", 1)  # the queue's one place must be free again
        assert busy.result().status_code == 200
    assert queued.status_code == 200, queued.text
    starts = [e for e in read_events(events_file) if e["event"] == "start"]
    assert len(starts) == 2, "the abandoned stream still generated"


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


def test_a_frame_that_does_not_decode_fails_its_request_instead_of_hanging(queue_of_one):
    server, _ = queue_of_one
    reply = httpx.post(server.v1 + "/chat/completions", timeout=15,
                       json={"model": "fast", "messages": [{"role": "user", "content": "MALFORMED"}]})
    assert reply.status_code == 503, reply.text
    assert reply.json()["error"]["type"] == "server_error"
    assert chat(server, "fast", 2).status_code == 200  # the model still serves


def test_embeddings_client_that_hangs_up_while_queued_leaves_the_queue(queue_of_one):
    server, events_file = queue_of_one
    chat(server, "slow", 1)
    events_file.unlink(missing_ok=True)
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(chat, server, "slow", 60)  # holds the one slot ~3 s
        assert wait_for_start(events_file, "slow"), "the busy request never started"
        with held_request(server, "/v1/embeddings", {"model": "slow", "input": "hello"}):  # queued; gives up
            assert wait_for(lambda: model_status(server, "slow")["queued"] == 1), "never queued"
        assert wait_for(lambda: model_status(server, "slow")["queued"] == 0), \
            "the request that hung up kept its place in the queue"
        assert not busy.done()
        queued = chat(server, "slow", 1)  # the queue's one place must be free again
        assert busy.result().status_code == 200
    assert queued.status_code == 200, queued.text


def test_a_streamed_token_is_not_held_back_while_the_backend_stalls(queue_of_one):
    server, _ = queue_of_one  # its "stalling" model sends two words, then pauses 1.5 s
    chat(server, "stalling", 1)
    arrivals = []
    with httpx.stream("POST", server.v1 + "/chat/completions", timeout=30,
                      json={"model": "stalling", "messages": USER, "max_tokens": 3,
                            "stream": True}) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                text = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                arrivals.extend([time.monotonic()] * len(text.split()))
    assert len(arrivals) == 3
    # The second word came while the backend stalled, not with the third, 1.5 s later.
    gap = arrivals[2] - arrivals[1]
    assert gap > 0.75, f"the second word waited for the third: {gap:.3f} s before it"


# -- the admin API while models load and unload --------------------------------------------

LOADS = 12  # hammer until the churn has loaded this many times (60 s at most)


def consistency_problem(status: dict) -> str | None:
    """Why this status contradicts itself (None when it doesn't)."""
    state, pid, slots = status["state"], status["pid"], status["slots"]
    if state in ("loaded", "unloading") and (pid is None or slots is None):
        return f"{state} without a pid or slots"
    if state in ("unloaded", "failed") and (pid is not None or slots is not None):
        return f"{state} with a pid or slots"
    if state == "loading" and slots is not None:
        return "loading with slots"
    return None


def test_a_model_unloading_while_it_loads_again_is_shown_as_the_unloading_one():
    spec = ModelSpec(id="m", backend="echo", path="m.echo", plugin="echo")
    scheduler = Scheduler(Settings(max_workers=2))
    leaving = Entry(spec=spec, handle=WorkerHandle(spec, 1, on_exit=lambda _: None),
                    slots=anyio.Semaphore(1))
    leaving.handle.pid = os.getpid()
    leaving.ready.set()
    coming = Entry(spec=spec, handle=WorkerHandle(spec, 1, on_exit=lambda _: None))
    scheduler.unloading[spec.id], scheduler.entries[spec.id] = leaving, coming
    status = admin_model_status(spec, scheduler)
    assert status["state"] == "unloading"
    assert status["pid"] == os.getpid() and status["slots"] == 1
    assert consistency_problem(status) is None


def test_model_status_never_fails_while_models_load_and_unload(start_app, models_dir):
    (models_dir / "sluggish.echo").write_text(json.dumps({"load_delay": 0.05}))
    problems: list[str] = []
    actions = {"load": 0}
    stop = threading.Event()
    with start_app(scheduling=Settings(max_workers=2)) as client:
        def churn(model: str) -> None:
            while not stop.is_set():
                for action, body in (("load", None), ("unload", {"force": True})):
                    answer = client.post(f"/admin/models/{model}/{action}", json=body)
                    if answer.status_code >= 500:
                        problems.append(f"{action} {model}: {answer.status_code} {answer.text}")
                    actions["load"] += action == "load"

        def chat_meanwhile() -> None:  # requests that evict and reload models meanwhile
            while not stop.is_set():
                answer = client.post("/v1/chat/completions", json={
                    "model": "sluggish", "messages": USER, "max_tokens": 2})
                if answer.status_code >= 500:
                    problems.append(f"chat: {answer.status_code} {answer.text}")

        threads = [threading.Thread(target=churn, args=(model,)) for model in ("fast", "wide")]
        threads.append(threading.Thread(target=chat_meanwhile))
        for thread in threads:
            thread.start()
        try:
            started = time.monotonic()
            while actions["load"] < LOADS and time.monotonic() - started < 60:
                for model in ("fast", "wide", "sluggish"):
                    answer = client.get(f"/admin/models/{model}")
                    if answer.status_code != 200:
                        problems.append(f"GET {model}: {answer.status_code} {answer.text}")
                    elif problem := consistency_problem(answer.json()):
                        problems.append(f"GET {model}: {problem}: {answer.json()}")
                listing = client.get("/admin/models")
                if listing.status_code != 200:
                    problems.append(f"GET /admin/models: {listing.status_code} {listing.text}")
        finally:
            stop.set()
            for thread in threads:
                thread.join()
    assert not problems, "\n".join(problems[:10])
    assert actions["load"] >= LOADS, "the models hardly changed state: the test exercised nothing"
