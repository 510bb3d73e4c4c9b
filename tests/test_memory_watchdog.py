"""A worker can't take the machine: one that grows past what the memory limit leaves it is
killed by the server, its request answered 503 `worker_out_of_memory`, the event published,
and the other models untouched. The server runs under an address-space limit, so that a
regression fails here instead of waking the kernel's OOM killer."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from support import admin_events, chat

GIB = 2**30


def test_a_worker_past_the_memory_limit_is_killed_and_the_others_serve_on(start_server):
    with start_server("--max-memory", "600M", "--max-workers", "2",
                      address_space=3 * GIB) as server:
        assert chat(server, "slow", 1, content="warm up").status_code == 200

        def grow_beside_a_stream():
            with ThreadPoolExecutor(1) as pool:  # 40 tokens at 0.05 s: ~2 s beside the growth
                beside = pool.submit(chat, server, "slow", 40, content="a b c")
                grown = chat(server, "fast", None, content="GROW")
                return grown, beside.result()

        events, (grown, beside) = admin_events(
            server, grow_beside_a_stream, lambda events: events[-1]["type"] == "memory_exceeded")
        event = events[-1]

        assert grown.status_code == 503, grown.text
        error = grown.json()["error"]
        assert error["code"] == "worker_out_of_memory"
        assert "--max-memory" in error["message"] and "'fast'" in error["message"]
        assert event["model"] == "fast" and event["limit"] == 600 * 2**20
        assert event["rss"] > event["allowed"]
        assert event["rss"] < 2 * GIB  # stopped long before the 4 GiB it would have taken

        assert beside.status_code == 200, beside.text  # the other model's stream finished
        assert beside.json()["usage"]["completion_tokens"] == 40
        assert f"pid {event['pid']}) grew to" in server.log()  # and logged
        # The killed model loads again on the next request.
        assert chat(server, "fast", 2, content="again").status_code == 200
