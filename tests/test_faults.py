"""Faults, against a real server: a worker killed with -9 while it streams to several clients,
a worker that hangs, backends that raise or abort while loading, a corrupt model file, a model
file deleted while loaded. Each is a clear error for the requests it touches; the server goes
on serving every other model."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest

from llama_api.testing import pid_exists, serve, wait_for

USER = [{"role": "user", "content": "tick tock"}]
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
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    models = folder / "models"
    models.mkdir()
    for name, options in MODELS.items():
        (models / f"{name}.echo").write_text(json.dumps(options))
    (models / "corrupt.echo").write_text("{not json")
    env = {"LLAMA_API_PLUGINS": "echo", "LLAMA_API_ECHO_EVENTS": str(folder / "events.jsonl")}
    with serve("--models-dir", str(models), "--max-workers", "4", "--request-timeout", "3",
               env=env) as running:
        running.models = models
        yield running
    print(f"\nFAULTS: {FIGURES['faults']} faults, {FIGURES['requests']} requests, "
          f"{FIGURES['errors']} clear errors, {FIGURES['5xx_unexpected']} unexpected 5xx, "
          f"{FIGURES['lost']} lost")


def chat(server, model: str, max_tokens: int = 4, timeout: float = 30) -> httpx.Response:
    FIGURES["requests"] += 1
    response = httpx.post(server.v1 + "/chat/completions", timeout=timeout,
                          json={"model": model, "messages": USER, "max_tokens": max_tokens})
    if response.status_code >= 400:
        FIGURES["errors"] += 1
    return response


def served(server, model: str = "other") -> None:
    response = chat(server, model)
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


def test_kill_9_under_three_streams_fails_each_and_spares_the_rest(server):
    served(server, "wide")
    pid = server.health()["workers"]["wide"]
    results: list[list[str]] = []
    started = [threading.Event() for _ in range(3)]
    clients = [threading.Thread(target=stream_events, args=(server, "wide", 400, started[i],
                                                            results)) for i in range(3)]
    for client in clients:
        client.start()
    assert all(event.wait(10) for event in started), "the streams did not start"
    other = threading.Thread(target=served, args=(server,))  # another model, meanwhile
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
    served(server, "wide")  # reloaded on the next request
    assert server.health()["workers"]["wide"] != pid


def test_a_hung_worker_times_out_and_others_are_served_meanwhile(server):
    answers = []
    hung = threading.Thread(target=lambda: answers.append(chat(server, "hangs", 6)))
    hung.start()
    FIGURES["faults"] += 1
    time.sleep(0.5)
    for _ in range(3):  # while it hangs
        served(server)
    hung.join(20)
    assert answers, "the request to the hung worker never ended"
    [answer] = answers
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "worker_timeout"


@pytest.mark.parametrize(("model", "says"), [
    ("raises", "the backend has a bug"),
    ("aborts", "signal 6"),  # the process died while loading: the error says how
    ("corrupt", "cannot read echo model"),
])
def test_a_model_that_cannot_load_is_a_clear_503(server, model, says):
    FIGURES["faults"] += 1
    response = chat(server, model)
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["type"] == "server_error" and error["code"] in (
        "model_load_failed", "worker_crashed", "backend_unavailable")
    assert says in error["message"] and model in error["message"]
    served(server)
    # Asked again, it fails the same clear way (no stuck state, no 500).
    again = chat(server, model)
    assert again.status_code == 503 and again.json()["error"]["code"] == error["code"]


def test_a_model_file_deleted_while_loaded(server):
    served(server, "doomed")
    pid = server.health()["workers"]["doomed"]
    (server.models / "doomed.echo").unlink()
    FIGURES["faults"] += 1
    # Loaded, it may go on serving from memory, or be let go as gone: never a 500.
    response = chat(server, "doomed")
    assert response.status_code in (200, 404), response.text
    unload = httpx.post(server.url + "/admin/models/doomed/unload", timeout=30)
    assert unload.status_code in (200, 404), unload.text
    assert wait_for(lambda: not pid_exists(pid), timeout=10)
    response = chat(server, "doomed")  # now it is gone for good
    assert response.status_code in (404, 503), response.text
    assert response.json()["error"]["code"] in ("model_not_found", "model_load_failed")
    served(server)


def test_a_crash_is_logged_with_the_worker_s_last_lines(client, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="llama_api")
    reply = client.post(client.v1 + "/chat/completions", json={
        "model": "noisy", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
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
