"""A full disk while the responses store writes, against a real server.

The server runs under a file-size limit (RLIMIT_FSIZE): a write past it fails with EFBIG
(CPython ignores SIGXFSZ), which SQLite reports as a full disk or an I/O error. A response
whose stored size passes the limit must fail clearly in the Responses API's shape (a 503
`store_unavailable` naming the file; `response.failed` for a stream), leave nothing
half-written behind, and the server must go on serving everything else. Its log goes to a
pipe, which the limit doesn't touch.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import httpx

from llama_api.testing import free_port
from llama_api.testing.processes import end

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
    events = []
    for block in reply.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines()
                     if not line.startswith(":"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


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
        chat = httpx.post(url + "/v1/chat/completions", timeout=30, json={
            "model": "fast", "messages": [{"role": "user", "content": "still here"}]})
        assert chat.status_code == 200, chat.text
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
