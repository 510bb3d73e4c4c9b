"""`serve --spare-worker`: a worker per plugin started ahead (its `prepare_worker` done), taken
by the next load; a new spare follows each load; spares end with the server."""

from __future__ import annotations

import os
import signal

import httpx
from support import USER, chat, read_events, wait_for_start

from llama_api.testing import wait_for
from llama_api.testing.processes import children, gone


def prepared(events_file) -> list[int]:
    """The pids of the workers that ran prepare_worker, oldest first."""
    return [e["pid"] for e in read_events(events_file) if e["event"] == "prepared"]


def spare_ready(server, events_file, known: set[int]) -> int | None:
    """A child of the server that prepared itself and serves no model, not in `known`."""
    serving = set(server.health()["workers"].values())
    live = set(children(server.process.pid))
    fresh = [pid for pid in prepared(events_file)
             if pid in live and pid not in serving and pid not in known]
    return fresh[-1] if fresh else None


def test_a_cold_load_takes_the_spare_and_another_one_starts(start_server, events_file):
    with start_server("--spare-worker") as server:
        assert wait_for(lambda: spare_ready(server, events_file, set()), timeout=20)
        spare = spare_ready(server, events_file, set())
        assert server.health()["workers"] == {}  # before any request: no model loaded
        assert set(children(server.process.pid)) == {spare}

        assert chat(server, "fast").status_code == 200
        assert server.health()["workers"]["fast"] == spare  # loaded in the spare's process

        assert wait_for(lambda: spare_ready(server, events_file, {spare}), timeout=20)
        second = spare_ready(server, events_file, {spare})
        assert set(children(server.process.pid)) == {spare, second}

        # Unloading ends the model's process; the spare stays, and the next load takes it.
        answer = httpx.post(server.url + "/admin/models/fast/unload", timeout=30)
        assert answer.status_code == 200
        assert wait_for(lambda: spare not in children(server.process.pid), timeout=10)
        assert chat(server, "slow", max_tokens=2).status_code == 200
        assert server.health()["workers"]["slow"] == second
        assert wait_for(lambda: spare_ready(server, events_file, {spare, second}), timeout=20)
        left = set(children(server.process.pid))
    assert len(left) == 2  # the model's worker and the spare: the server ends both
    assert wait_for(lambda: all(gone(pid) for pid in left), timeout=10)


def test_a_spare_that_died_is_replaced_and_loads_still_work(start_server, events_file):
    with start_server("--spare-worker") as server:
        assert wait_for(lambda: spare_ready(server, events_file, set()), timeout=20)
        spare = spare_ready(server, events_file, set())
        os.kill(spare, signal.SIGKILL)
        assert wait_for(lambda: spare not in children(server.process.pid), timeout=10)

        assert chat(server, "fast").status_code == 200  # a worker of its own
        worker = server.health()["workers"]["fast"]
        assert worker != spare
        assert wait_for(lambda: spare_ready(server, events_file, {spare, worker}), timeout=20)


def test_without_the_flag_no_worker_starts_before_a_request(server, events_file):
    assert server.health()["workers"] == {}
    assert children(server.process.pid) == []
    assert chat(server, "fast").status_code == 200
    assert children(server.process.pid) == [server.health()["workers"]["fast"]]


def test_the_next_spare_waits_until_no_request_runs(start_server, events_file):
    with start_server("--spare-worker") as server:
        assert wait_for(lambda: spare_ready(server, events_file, set()), timeout=20)
        spare = spare_ready(server, events_file, set())
        with httpx.stream("POST", server.v1 + "/chat/completions", timeout=30, json={
                "model": "slow", "messages": USER, "max_tokens": 40, "stream": True}) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))  # loaded, streaming
            assert wait_for_start(events_file, "slow")
            # 2 s of tokens left: a spare starting now would take cores from this stream
            assert not wait_for(lambda: set(children(server.process.pid)) != {spare}, timeout=1)
            assert [line for line in lines if line.startswith("data: ")][-1] == "data: [DONE]"
        assert wait_for(lambda: spare_ready(server, events_file, {spare}), timeout=20)
