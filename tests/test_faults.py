"""Faults, against a real server: a worker killed with -9 while it streams to several clients,
a worker that hangs, backends that raise or abort while loading, a corrupt model file, a model
file deleted while loaded; and a full disk while the responses store writes. Each is a clear
error for the requests it touches; the server goes on serving every other model.

For the full disk, the server runs under a file-size limit (RLIMIT_FSIZE): a write past it
fails with EFBIG (CPython ignores SIGXFSZ), which SQLite reports as a full disk or an I/O error.
A response whose stored size passes the limit must fail clearly in the Responses API's shape
(a 503 `store_unavailable` naming the file; `response.failed` for a stream), leave nothing
half-written behind, and the server must go on serving everything else. Its log goes to a
pipe, which the limit doesn't touch.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
from support import USER, chat, echo_server, sse, write_echo_models

from llama_api.testing import free_port, pid_exists, wait_for
from llama_api.testing.processes import end

MODELS = {
    "wide": {"delay": 0.05, "slots": 3},      # three streams at once, killed under them
    "other": {"delay": 0.02},                 # another model, which must not notice
    "hangs": {"stall": 3600, "stall_after": 2},
    "raises": {"raise_load": "the backend has a bug"},
    "aborts": {"abort_load": True},
    "doomed": {},                             # its file is deleted while it is loaded
}
FIGURES = {"faults": 0, "requests": 0, "errors": 0, "5xx_unexpected": 0, "lost": 0}


@pytest.fixture(scope="module")
def faults_server(tmp_path_factory):
    """A server on MODELS and a corrupt model file, with a 3 s request timeout."""
    folder = tmp_path_factory.mktemp("faults")
    models = write_echo_models(folder / "models", MODELS)
    (models / "corrupt.echo").write_text("{not json")
    with echo_server(models, "--max-workers", "4", "--request-timeout", "3",
                     events=folder / "events.jsonl") as running:
        yield running
    print(f"\nFAULTS: {FIGURES['faults']} faults, {FIGURES['requests']} requests, "
          f"{FIGURES['errors']} clear errors, {FIGURES['5xx_unexpected']} unexpected 5xx, "
          f"{FIGURES['lost']} lost")


def counted_chat(server, model: str, max_tokens: int = 4,
                 timeout: float = 30) -> httpx.Response:
    """A chat request, counted in the figure line."""
    FIGURES["requests"] += 1
    response = chat(server, model, max_tokens, timeout=timeout)
    if response.status_code >= 400:
        FIGURES["errors"] += 1
    return response


def served(server, model: str = "other") -> None:
    response = counted_chat(server, model)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "tick tock tick tock"


def stream_events(server, model: str, max_tokens: int, first_chunk: threading.Event,
                  into: list) -> None:
    """One streaming client: every event it got, and whether the stream ended."""
    FIGURES["requests"] += 1
    events = []
    try:
        with httpx.stream("POST", server.v1 + "/chat/completions", timeout=30, json={
                "model": model, "messages": USER, "max_tokens": max_tokens,
                "stream": True}) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    first_chunk.set()
        into.append(events)
    except httpx.HTTPError as exc:
        FIGURES["lost"] += 1
        into.append([f"lost: {exc!r}"])


def test_kill_9_under_three_streams_fails_each_and_spares_the_rest(faults_server):
    served(faults_server, "wide")
    pid = faults_server.health()["workers"]["wide"]
    results: list[list[str]] = []
    started = [threading.Event() for _ in range(3)]
    clients = [threading.Thread(target=stream_events,
                                args=(faults_server, "wide", 400, started[i], results))
               for i in range(3)]
    for client in clients:
        client.start()
    assert all(event.wait(10) for event in started), "the streams did not start"
    other = threading.Thread(target=served, args=(faults_server,))  # another model, meanwhile
    other.start()
    os.kill(pid, signal.SIGKILL)
    FIGURES["faults"] += 1
    killed_at = time.monotonic()
    for client in clients:
        client.join(15)
    other.join(15)
    assert time.monotonic() - killed_at < 10, "a stream did not end after the crash"
    assert len(results) == 3
    for events in results:
        last = json.loads(events[-1])
        assert last["error"]["code"] == "worker_crashed", events[-3:]
        FIGURES["errors"] += 1
        assert all("error" not in json.loads(e) for e in events[:-1])  # one error, at the end
    served(faults_server, "wide")  # reloaded on the next request
    assert faults_server.health()["workers"]["wide"] != pid


def test_a_hung_worker_times_out_and_others_are_served_meanwhile(faults_server):
    answers = []
    hung = threading.Thread(
        target=lambda: answers.append(counted_chat(faults_server, "hangs", 6)))
    hung.start()
    FIGURES["faults"] += 1
    time.sleep(0.5)
    for _ in range(3):  # while it hangs
        served(faults_server)
    hung.join(20)
    assert answers, "the request to the hung worker never ended"
    [answer] = answers
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "worker_timeout"


@pytest.mark.parametrize(("model", "says"), [
    ("raises", "the backend has a bug"),
    ("aborts", "signal 6"),  # the process died while loading: the error says how
    ("corrupt", "cannot read echo model"),
])
def test_a_model_that_cannot_load_is_a_clear_503(faults_server, model, says):
    FIGURES["faults"] += 1
    response = counted_chat(faults_server, model)
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["type"] == "server_error" and error["code"] in (
        "model_load_failed", "worker_crashed", "backend_unavailable")
    assert says in error["message"] and model in error["message"]
    served(faults_server)
    # Asked again, it fails the same clear way (no stuck state, no 500).
    again = counted_chat(faults_server, model)
    assert again.status_code == 503 and again.json()["error"]["code"] == error["code"]


def test_a_model_file_deleted_while_loaded(faults_server):
    served(faults_server, "doomed")
    pid = faults_server.health()["workers"]["doomed"]
    (faults_server.models / "doomed.echo").unlink()
    FIGURES["faults"] += 1
    # Loaded, it may go on serving from memory, or be let go as gone: never a 500.
    response = counted_chat(faults_server, "doomed")
    assert response.status_code in (200, 404), response.text
    unload = httpx.post(faults_server.url + "/admin/models/doomed/unload", timeout=30)
    assert unload.status_code in (200, 404), unload.text
    assert wait_for(lambda: not pid_exists(pid), timeout=10)
    response = counted_chat(faults_server, "doomed")  # now it is gone for good
    assert response.status_code in (404, 503), response.text
    assert response.json()["error"]["code"] in ("model_not_found", "model_load_failed")
    served(faults_server)


def test_a_crash_is_logged_with_the_worker_s_last_lines(client, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="llama_api")
    reply = chat(client, "noisy", 2, content="hi")
    assert reply.status_code == 200
    pid = client.get("/health").json()["workers"]["noisy"]
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not pid_exists(pid))

    def crash_reports():
        return [r.getMessage() for r in caplog.records
                if r.levelno == logging.ERROR and "died" in r.getMessage()]

    assert wait_for(lambda: crash_reports(), timeout=10)
    [report] = crash_reports()
    assert f"pid {pid}" in report
    assert "noise on stdout while generating" in report  # what the worker printed last


# -- a full disk while the responses store writes ------------------------------------------

FILE_LIMIT = 1 << 20  # bytes any file of the server may reach
# Prompt words are tokens (the echo model takes at most 1000), so a big store is long words.
HUGE_INSTRUCTIONS = " ".join(["x" * 2000] * 600)  # ~1.2 MB, stored with the response

LAUNCHER = """
import os, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
os.execv(sys.argv[2], sys.argv[2:])
"""


@contextmanager
def serve_with_file_limit(*args: str, limit: int):
    """A real server (and its workers) whose files can't grow past `limit` bytes: a small
    launcher sets the limit, then becomes the server."""
    port = free_port()
    server = [sys.executable, "-m", "llama_api", "serve", "--port", str(port), *args]
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(limit), *server],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "LLAMA_API_PLUGINS": "echo", "PYTHONDONTWRITEBYTECODE": "1"})
    log: list[str] = []
    drain = threading.Thread(target=lambda: log.extend(
        line.decode(errors="replace") for line in process.stdout), daemon=True)
    drain.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, "".join(log)
            try:
                httpx.get(url + "/health", timeout=5)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "".join(log)
                time.sleep(0.05)
        yield url, process, log
    finally:
        end(process)
        drain.join(5)


def respond(url: str, **fields) -> httpx.Response:
    return httpx.post(url + "/v1/responses", timeout=60,
                      json={"model": "fast", "max_output_tokens": 2, **fields})


def streamed(url: str, **fields) -> list[tuple[str, dict]]:
    """(event name, data) of each event of a streamed response."""
    reply = respond(url, stream=True, **fields)
    assert reply.status_code == 200, reply.text
    return sse(reply)


def test_a_full_disk_fails_the_stored_response_clearly_and_spares_the_rest(models_dir,
                                                                           tmp_path):
    data = tmp_path / "data"
    store_file = data / "responses.sqlite3"
    with serve_with_file_limit("--models-dir", str(models_dir), "--data-dir", str(data),
                               limit=FILE_LIMIT) as (url, process, log):
        before = respond(url, input="kept before ONCE")
        assert before.status_code == 200, before.text
        kept = before.json()["id"]

        # A plain request: the store's 503, in OpenAI's shape, naming the file.
        full = respond(url, input="too big", instructions=HUGE_INSTRUCTIONS)
        assert full.status_code == 503, full.text
        error = full.json()["error"]
        assert error["code"] == "store_unavailable" and error["type"] == "server_error"
        assert str(store_file) in error["message"] and "is the disk full?" in error["message"]

        # A stream: it ends with `response.failed` (never `response.completed`).
        events = streamed(url, input="too big", instructions=HUGE_INSTRUCTIONS)
        names = [name for name, _ in events]
        assert names[0] == "response.created" and names[-1] == "response.failed", names
        assert "response.completed" not in names
        failed = events[-1][1]["response"]
        assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
        assert str(store_file) in failed["error"]["message"]
        assert "is the disk full?" in failed["error"]["message"]
        lost = failed["id"]
        assert httpx.get(f"{url}/v1/responses/{lost}", timeout=10).status_code == 404

        # Everything else goes on: chat, an unstored response (even a big one), old reads,
        # and a small stored response (the failed write left the store usable).
        chatted = httpx.post(url + "/v1/chat/completions", timeout=30, json={
            "model": "fast", "messages": [{"role": "user", "content": "still here"}]})
        assert chatted.status_code == 200, chatted.text
        unstored = respond(url, input="not kept ONCE", instructions=HUGE_INSTRUCTIONS,
                           store=False)
        assert unstored.status_code == 200, unstored.text
        read = httpx.get(f"{url}/v1/responses/{kept}", timeout=10)
        assert read.status_code == 200 and read.json()["output"] == before.json()["output"]
        items = httpx.get(f"{url}/v1/responses/{kept}/input_items", timeout=10)
        assert items.status_code == 200 and len(items.json()["data"]) == 1
        after = respond(url, input="kept after ONCE", previous_response_id=kept)
        assert after.status_code == 200, after.text
        kept_after = after.json()["id"]
        assert httpx.get(f"{url}/v1/responses/{kept_after}", timeout=10).status_code == 200

        assert process.poll() is None
    server_log = "".join(log)  # all of it, once the server has stopped
    assert "Traceback" not in server_log, server_log[-3000:]

    # Nothing half-written: the file is sound and holds exactly the two kept responses.
    with sqlite3.connect(store_file) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        ids = {row[0] for row in db.execute("SELECT id FROM responses")}
    db.close()
    assert ids == {kept, kept_after}
    assert lost not in ids


def test_a_store_full_from_the_start_refuses_each_stored_request(models_dir, tmp_path):
    """A limit so small that even the store's first pages don't fit: each stored request,
    plain or streamed, fails clearly before any work; the rest are served."""
    data = tmp_path / "data"
    with serve_with_file_limit("--models-dir", str(models_dir), "--data-dir", str(data),
                               limit=2048) as (url, process, log):
        for stream in (False, True, False):  # asked again, the same answer: no stuck state
            reply = respond(url, input="q ONCE", stream=stream)
            assert reply.status_code == 503, reply.text
            error = reply.json()["error"]
            assert error["code"] == "store_unavailable" and "is the disk full?" in error["message"]
            unstored = respond(url, input="q ONCE", store=False, stream=stream)
            assert unstored.status_code == 200, unstored.text
        assert process.poll() is None
    assert "Traceback" not in "".join(log), "".join(log)[-3000:]


def test_a_prune_that_cannot_write_does_not_fail_the_reads(models_dir, tmp_path):
    """Pruning expired responses writes too (a DELETE in the WAL). On a full disk it fails,
    and the read it came before must be served all the same."""
    data = tmp_path / "data"
    args = ("--models-dir", str(models_dir), "--data-dir", str(data), "--responses-ttl", "3600")
    with serve_with_file_limit(*args, limit=FILE_LIMIT) as (url, _process, _log):
        kept = respond(url, input="kept ONCE").json()
    with sqlite3.connect(data / "responses.sqlite3") as db:  # expired rows on many pages
        db.executemany("INSERT INTO responses VALUES (?, ?, NULL, '[]', ?, NULL)", [
            (f"resp_old{i}", time.time() - 7200, json.dumps({"pad": "p" * 2000}))
            for i in range(300)])
    db.close()
    # Room for the WAL index (32 KiB) but not for the DELETE of 300 rows.
    with serve_with_file_limit(*args, limit=64 << 10) as (url, process, log):
        read = httpx.get(f"{url}/v1/responses/{kept['id']}", timeout=10)
        assert read.status_code == 200, read.text
        assert read.json()["output"] == kept["output"]
        assert process.poll() is None
    server_log = "".join(log)
    assert "Traceback" not in server_log, server_log[-3000:]
    assert "pruning expired responses failed" in server_log, server_log[-3000:]
