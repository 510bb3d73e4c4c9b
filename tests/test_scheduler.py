"""On-demand loading, eviction, parallel workers, queueing, idle unload, crashes, cancel."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from llama_api.testing import pid_exists, wait_for
from llama_api_echo import USER, chat, read_events


def spans(events: list[dict]) -> dict[str, tuple[float, float]]:
    """model -> (first start, last end) of its generations."""
    result: dict[str, list[float]] = {}
    for e in events:
        if e["event"] in ("start", "end"):
            result.setdefault(e["model"], []).append(e["time"])
    return {model: (min(times), max(times)) for model, times in result.items()}


def test_two_models_generate_in_parallel_with_two_workers(start_server, events_file):
    with start_server("--max-workers", "2") as server:
        # Load both first, so the measured window is generation only.
        assert chat(server, "slow", 1).status_code == 200
        assert chat(server, "slower", 1).status_code == 200
        events_file.unlink()
        with ThreadPoolExecutor(2) as pool:
            replies = list(pool.map(lambda m: chat(server, m, 20), ["slow", "slower"]))
        assert [r.status_code for r in replies] == [200, 200]
        workers = server.health()["workers"]
        assert workers["slow"] != workers["slower"]
    windows = spans(read_events(events_file))
    (a_start, a_end), (b_start, b_end) = windows["slow"], windows["slower"]
    overlap = min(a_end, b_end) - max(a_start, b_start)
    assert overlap > 0.5, f"generations did not overlap: {windows}"  # each takes ~1 s


def test_least_recently_used_idle_worker_is_evicted_at_max_workers(start_server):
    with start_server("--max-workers", "2") as server:
        chat(server, "fast", 1)
        chat(server, "slow", 1)
        chat(server, "fast", 1)  # now "slow" is the least recently used
        pids = server.health()["workers"]
        assert chat(server, "wide", 1).status_code == 200
        health = server.health()
        assert sorted(health["loaded"]) == ["fast", "wide"]
        assert wait_for(lambda: not pid_exists(pids["slow"])), "evicted worker still alive"
        assert pid_exists(pids["fast"])


def test_eviction_at_one_worker_ends_the_previous_process(start_server):
    with start_server("--max-workers", "1") as server:
        chat(server, "fast", 1)
        first_pid = server.health()["workers"]["fast"]
        chat(server, "slow", 1)
        assert server.health()["loaded"] == ["slow"]
        assert not pid_exists(first_pid)


def test_concurrent_first_requests_share_one_load(start_server, events_file):
    with start_server() as server:
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda _: chat(server, "wide", 3), range(4)))
        assert all(r.status_code == 200 for r in replies)
        assert server.log().count("loading model wide") == 1
    assert len({e["pid"] for e in read_events(events_file)}) == 1


def test_requests_for_one_model_take_its_slots_in_order(start_server, events_file):
    with start_server() as server:
        chat(server, "slow", 1)
        events_file.unlink()
        results = {}

        def send(i):
            time.sleep(i * 0.1)  # arrive in order 0, 1, 2
            results[i] = (chat(server, "slow", 5), time.monotonic())

        threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert all(r.status_code == 200 for r, _ in results.values())
    assert results[0][1] < results[1][1] < results[2][1]  # FIFO
    events = [e for e in read_events(events_file) if e["event"] in ("start", "end")]
    # One slot: each generation ends before the next starts.
    assert [e["event"] for e in events] == ["start", "end"] * 3


def test_two_slot_model_runs_two_requests_at_once(start_server, events_file):
    with start_server() as server:
        chat(server, "wide", 1)
        events_file.unlink()
        with ThreadPoolExecutor(2) as pool:
            replies = list(pool.map(lambda _: chat(server, "wide", 10), range(2)))
        assert all(r.status_code == 200 for r in replies)
    starts = [e["time"] for e in read_events(events_file) if e["event"] == "start"]
    ends = [e["time"] for e in read_events(events_file) if e["event"] == "end"]
    assert max(starts) < min(ends), "the two generations did not overlap"


def test_queue_overflow_gets_429_with_retry_after(start_server):
    with start_server("--max-queue", "0") as server:
        chat(server, "slow", 1)
        with ThreadPoolExecutor(1) as pool:
            busy = pool.submit(chat, server, "slow", 30)
            time.sleep(0.5)
            refused = chat(server, "slow", 1)
            assert busy.result().status_code == 200
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "rate_limit_error"


def test_queue_waits_for_a_busy_worker_within_its_bound(start_server):
    with start_server("--max-workers", "1", "--max-queue", "4") as server:
        chat(server, "slow", 1)
        with ThreadPoolExecutor(2) as pool:
            busy = pool.submit(chat, server, "slow", 20)
            time.sleep(0.3)
            other = pool.submit(chat, server, "fast", 2)  # waits until "slow" is idle
            assert busy.result().status_code == 200
            assert other.result().status_code == 200
        assert server.health()["loaded"] == ["fast"]


def test_idle_timeout_unloads_the_model(start_server):
    with start_server("--idle-timeout", "1") as server:
        chat(server, "fast", 1)
        pid = server.health()["workers"]["fast"]
        assert wait_for(lambda: server.health()["loaded"] == [], timeout=10)
        assert wait_for(lambda: not pid_exists(pid))


def test_killed_worker_fails_its_stream_and_the_next_request_reloads(server):
    chat(server, "slow", 1)
    pid = server.health()["workers"]["slow"]
    client = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)
    stream = client.chat.completions.create(model="slow", messages=USER, max_tokens=200,
                                            stream=True)
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)
            if len(received) == 3:
                os.kill(pid, signal.SIGKILL)
    assert "stopped unexpectedly" in str(info.value.message)
    assert len(received) >= 3
    reply = chat(server, "slow", 2)
    assert reply.status_code == 200
    assert server.health()["workers"]["slow"] != pid


def test_client_disconnect_cancels_generation_in_the_worker(server, events_file):
    chat(server, "slow", 1)
    with httpx.stream("POST", server.v1 + "/chat/completions", timeout=30,
                      json={"model": "slow", "messages": USER, "max_tokens": 400,
                            "stream": True}) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                break  # hang up after the first chunk
    assert wait_for(lambda: any(e["event"] == "cancelled" for e in read_events(events_file)))
    cancelled = next(e for e in read_events(events_file) if e["event"] == "cancelled")
    assert cancelled["produced"] < 100  # stopped long before 400 tokens (~20 s)
    assert chat(server, "slow", 2).status_code == 200


def test_client_timeout_on_a_plain_request_cancels_it_too(server, events_file):
    chat(server, "slow", 1)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.v1 + "/chat/completions", timeout=0.5,
                   json={"model": "slow", "messages": USER, "max_tokens": 400})
    assert wait_for(lambda: any(e["event"] == "cancelled" for e in read_events(events_file)))
    cancelled = next(e for e in read_events(events_file) if e["event"] == "cancelled")
    assert cancelled["produced"] < 100
    assert chat(server, "slow", 2).status_code == 200


def test_shutdown_ends_every_worker(start_server):
    with start_server("--max-workers", "2") as server:
        chat(server, "fast", 1)
        chat(server, "slow", 1)
        pids = list(server.health()["workers"].values())
    assert all(wait_for(lambda p=p: not pid_exists(p)) for p in pids)


def test_a_crash_fails_only_the_request_it_was_serving(server):
    chat(server, "slow", 1)
    pid = server.health()["workers"]["slow"]
    with ThreadPoolExecutor(2) as pool:
        serving = pool.submit(chat, server, "slow", 100)  # ~5 s
        time.sleep(0.5)
        queued = pool.submit(chat, server, "slow", 3)  # waits for the slot
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        failed, succeeded = serving.result(), queued.result()
    assert failed.status_code == 503
    assert failed.json()["error"]["code"] == "worker_crashed"
    assert succeeded.status_code == 200, succeeded.text
    assert server.health()["workers"]["slow"] != pid
