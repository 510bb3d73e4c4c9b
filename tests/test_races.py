"""Races and edge cases in scheduling, cancellation and the worker protocol.

The tests that need a small queue and no fresh server share `queue_of_one`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import httpx
import msgspec
import pytest

from llama_api.contract.records import Delta, Usage
from llama_api.testing import pid_exists, serve, wait_for
from llama_api.testing.processes import children
from llama_api.testing.server import held_request
from llama_api.workers import protocol
from llama_api_echo import USER, chat, model_status, read_events, wait_for_start


@pytest.fixture(scope="module")
def queue_of_one(tmp_path_factory):
    """A server with `--max-queue 1` on fast, slow and stalling echo models; (server, events)."""
    folder = tmp_path_factory.mktemp("queue-of-one")
    models = {"fast": {}, "slow": {"delay": 0.05},
              # Two words come at once, then the backend pauses 1.5 s before the third.
              "stalling": {"stall": 1.5, "stall_after": 2}}
    for name, options in models.items():
        (folder / f"{name}.echo").write_text(json.dumps(options))
    events = folder / "events.jsonl"
    env = {"LLAMA_API_PLUGINS": "echo", "LLAMA_API_ECHO_EVENTS": str(events)}
    with serve("--models-dir", str(folder), "--max-queue", "1", env=env) as server:
        yield server, events


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
    from concurrent.futures import ThreadPoolExecutor

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
    from concurrent.futures import ThreadPoolExecutor

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


def test_frames_split_anywhere_decode_the_same():
    messages = [protocol.Deltas(id=1, deltas=[Delta(text="héllo " * 50)]),
                protocol.Embedded(id=2, data=bytes(range(256)) * 300, count=1, dims=19200),
                protocol.Deltas(id=1, deltas=[Delta(finish_reason="stop", usage=Usage())],
                                done=True)]
    stream = b"".join(protocol.encode(m) for m in messages)
    for chunk_size in (1, 3, 4, 5, 1000, len(stream)):
        reader = protocol.FrameReader()
        bodies = []
        for start in range(0, len(stream), chunk_size):
            bodies += reader.feed(stream[start:start + chunk_size])
        assert [protocol.from_worker_decoder.decode(b) for b in bodies] == messages
    assert len(protocol.FrameReader().feed(stream[:-1])) == 2  # the last one is not whole yet


def test_a_blocking_reader_gets_the_same_frames_until_the_pipe_closes():
    read_fd, write_fd = os.pipe()
    frames = [protocol.encode(protocol.Cancel(id=n)) for n in range(1, 200)]
    os.write(write_fd, b"".join(frames))
    os.close(write_fd)
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        got = [protocol.to_worker_decoder.decode(b) for b in protocol.read_frames(pipe.read, 7)]
    assert got == [protocol.Cancel(id=n) for n in range(1, 200)]


def test_a_load_failure_is_its_own_message_and_answers_no_request():
    body = protocol.encode(protocol.LoadFailed(kind="ModelLoadError", message="corrupt"))[4:]
    message = protocol.from_worker_decoder.decode(body)
    assert message == protocol.LoadFailed(kind="ModelLoadError", message="corrupt")
    assert not hasattr(message, "id")
    with pytest.raises(msgspec.ValidationError):  # a request failure always names its request
        protocol.from_worker_decoder.decode(msgspec.msgpack.encode({"type": "Failed"}))


def test_worker_log_lines_keep_their_level_and_their_lines():
    import logging

    traceback = "request 3 failed\nTraceback (most recent call last):\n  ...\nRuntimeError: x"
    line = protocol.format_log_line(logging.ERROR, traceback)
    assert "\n" not in line
    assert protocol.parse_log_line(line) == (logging.ERROR, traceback)
    assert protocol.parse_log_line("ggml_init: printed by a C library") == \
        (logging.INFO, "ggml_init: printed by a C library")
