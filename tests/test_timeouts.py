"""--request-timeout and --load-timeout: a worker that stops answering is killed and logged,
its requests fail with 503 `worker_timeout` (an error event mid-stream), and the server goes
on; a slow worker that keeps sending, or a request that waits for a slot, is left alone."""

from __future__ import annotations

import json
import logging
import re
import threading
import time

import pytest
from support import USER, chat, read_events, sse_blocks

from llama_api.scheduling.entries import Settings
from llama_api.testing import pid_exists, wait_for

# Echo options: `stall` pauses before token `stall_after`; an hour is a hang.
HANGS_AFTER_2 = {"stall": 3600, "stall_after": 2}
HANGS_LOADING = {"load_delay": 3600}


@pytest.fixture
def hanging_models(models_dir):
    (models_dir / "hangs.echo").write_text(json.dumps(HANGS_AFTER_2))
    (models_dir / "hangs-loading.echo").write_text(json.dumps(HANGS_LOADING))
    return models_dir


def killed_pid(message: str) -> int:
    return int(re.search(r"\(pid (\d+)\)", message).group(1))


def test_a_hung_generation_is_killed_and_the_next_request_works(hanging_models, start_app,
                                                                 events_file, caplog):
    settings = Settings(request_timeout=1.0)
    with caplog.at_level(logging.ERROR), start_app(scheduling=settings) as client:
        started = time.monotonic()
        response = chat(client, "hangs", 6)
        took = time.monotonic() - started
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "worker_timeout" and "--request-timeout" in error["message"]
        pid = killed_pid(error["message"])
        assert 1.0 <= took < 10
        assert wait_for(lambda: not pid_exists(pid), timeout=5), "the hung worker lives on"
        [record] = [r for r in caplog.records
                    if r.levelno == logging.ERROR and "--request-timeout" in r.getMessage()]
        assert "'hangs'" in record.getMessage() and str(pid) in record.getMessage()
        assert "hangs" not in client.get("/health").json()["workers"]  # the model was let go

        # Another model gets the one worker slot (--max-workers 1) and answers.
        assert chat(client, "fast", 6).json()["choices"][0]["message"]["content"] == \
            "tick tock tick tock tick tock"

        # Streamed: two tokens, then OpenAI's error event; a new worker served it.
        with client.stream("POST", "/v1/chat/completions", json={
                "model": "hangs", "messages": USER, "max_tokens": 6, "stream": True}) as stream:
            assert stream.status_code == 200
            events = sse_blocks(stream.read())
        error = json.loads(events[-1][6:])["error"]
        assert error["code"] == "worker_timeout"
        assert killed_pid(error["message"]) != pid
        texts = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content", "")
                        for e in events[:-1] if e.startswith("data: "))
        assert texts == "tick tock"
    starts = [e["pid"] for e in read_events(events_file)
              if e["event"] == "start" and e["model"] == "hangs"]
    assert len(set(starts)) == 2  # the next request loaded the model again


def test_a_slow_worker_that_keeps_sending_and_a_queued_request_are_not_killed(start_app):
    # `slow` sends a token each 0.05 s: 30 tokens take 1.5 s, longer than the timeout, and
    # the second request waits that long for the model's one slot before it starts.
    with start_app(scheduling=Settings(request_timeout=1.0)) as client:
        answers = []

        def ask():
            answers.append(chat(client, "slow", 30))

        threads = [threading.Thread(target=ask) for _ in range(2)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
            time.sleep(0.2)  # the first one takes the slot
        for thread in threads:
            thread.join()
        assert time.monotonic() - started >= 2.5  # one after the other
        assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
        assert {a.json()["usage"]["completion_tokens"] for a in answers} == {30}
        assert "slow" in client.get("/health").json()["workers"]


def test_a_hung_load_is_killed_and_reported(hanging_models, start_app, caplog):
    # The limit holds for the `fast` load at the end too: a process start, seconds on a busy host.
    settings = Settings(load_timeout=3.0)
    with caplog.at_level(logging.ERROR), start_app(scheduling=settings, keepalive=30) as client:
        response = chat(client, "hangs-loading", 6)
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "worker_timeout" and "--load-timeout" in error["message"]
        pid = killed_pid(error["message"])
        assert not pid_exists(pid)  # killed and reaped before the answer
        assert any("--load-timeout" in r.getMessage() and str(pid) in r.getMessage()
                   for r in caplog.records if r.levelno == logging.ERROR)
        assert chat(client, "fast", 6).status_code == 200


@pytest.mark.parametrize("route, body, last_event", [
    ("/v1/chat/completions", {"messages": USER}, "data: "),
    ("/v1/messages", {"messages": USER, "max_tokens": 4}, "event: error\n"),
    ("/v1/responses", {"input": "tick tock"}, "event: response.failed\n"),
], ids=["openai", "anthropic", "responses"])
def test_a_load_that_fails_after_the_keepalive_interval_is_each_apis_error_event(
        hanging_models, start_app, route, body, last_event):
    settings = Settings(load_timeout=1.0)
    with start_app(scheduling=settings, keepalive=0.2) as client:
        response = client.post(route, json={"model": "hangs-loading", "stream": True, **body})
    assert response.status_code == 200  # committed while the load went on
    events = sse_blocks(response.content)
    assert ": keep-alive" in events
    assert events[-1].startswith(last_event)
    assert "worker_timeout" in events[-1] or "--load-timeout" in events[-1]
