"""How the server starts and stops: SIGTERM/SIGINT mid-stream, the grace period, no orphaned
workers (a worker watches its parent), and nothing left open when the start fails. Where the
keys come from: test_keys.py."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import traceback

import httpx
import pytest
from support import USER

from llama_api.scheduling.scheduler import Scheduler
from llama_api.testing import pid_exists, wait_for
from llama_api.testing.processes import children, gone
from llama_api.testing.server import held_request


def refused(url: str) -> bool:
    try:
        httpx.get(url + "/health", timeout=1)
    except httpx.TransportError:
        return True
    return False


def open_stream(server, model: str, max_tokens: int):
    """A streamed chat request that has sent its first chunk: (context, lines iterator)."""
    context = httpx.stream("POST", server.v1 + "/chat/completions", timeout=30, json={
        "model": model, "messages": USER, "max_tokens": max_tokens, "stream": True})
    response = context.__enter__()
    assert response.status_code == 200
    lines = response.iter_lines()
    assert next(line for line in lines if line.startswith("data: "))
    return context, lines


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_stream_lets_it_finish_then_exits_0_and_ends_workers(start_server, sig):
    with start_server("--grace-period", "10") as server:
        context, lines = open_stream(server, "slow", max_tokens=30)  # 1.5 s of tokens
        worker = server.health()["workers"]["slow"]
        server.process.send_signal(sig)
        try:
            assert wait_for(lambda: refused(server.url), timeout=5), "still accepting after the signal"
            rest = [line for line in lines if line.startswith("data: ")]
        finally:
            context.__exit__(None, None, None)
        assert rest[-1] == "data: [DONE]"
        chunks = [json.loads(line[6:]) for line in rest[:-1]]
        finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
        assert finishes[-1] == "length"  # all 30 tokens came: the stream was not cut
        assert server.process.wait(timeout=15) == 0
        assert wait_for(lambda: gone(worker), timeout=5), "the worker outlived the server"


def test_the_grace_period_cuts_off_a_stream_that_runs_too_long(start_server):
    with start_server("--grace-period", "0.5") as server:
        context, lines = open_stream(server, "slow", max_tokens=400)  # 20 s of tokens
        worker = server.health()["workers"]["slow"]
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            with pytest.raises(httpx.RemoteProtocolError):  # cut off mid-body
                for _ in lines:
                    pass
        finally:
            context.__exit__(None, None, None)
        assert server.process.wait(timeout=15) == 0
        assert time.monotonic() - signalled < 8
        assert wait_for(lambda: gone(worker), timeout=5)


def test_kill_9_of_the_server_mid_load_leaves_no_worker_behind(start_server, models_dir):
    # 10 s between progress reports: no write to a dead pipe ends the worker within the test
    (models_dir / "sluggish.echo").write_text(json.dumps({"load_delay": 40}))
    body = {"model": "sluggish", "messages": USER, "max_tokens": 1}
    with start_server() as server:
        # The client stays until the load has begun (a worker is spawned): a client that
        # hung up before the dispatch would leave nothing loading.
        with held_request(server, "/v1/chat/completions", body):
            assert wait_for(lambda: len(children(server.process.pid)) == 1, timeout=15)
            (worker,) = children(server.process.pid)
            server.process.kill()  # no shutdown, no cleanup: only the kernel or the watch can act
            server.process.wait(timeout=5)
        assert wait_for(lambda: gone(worker), timeout=5), "the worker outlived a kill -9 of its server"


CHILD = """
import sys, time
import llama_api.workers.lifeline as lifeline
if sys.argv[1] == "polling":  # the watch used where there is no parent-death signal
    lifeline.set_parent_death_signal = lambda sig: False
lifeline.watch_parent(poll_interval=0.1)
print("watching", flush=True)
time.sleep(60)
"""

PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("how", ["prctl", "polling"])
def test_a_watched_child_ends_when_its_parent_is_killed(how):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, how],
                              stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "watching"
        assert pid_exists(child)
        parent.kill()  # kill -9: the parent has no chance to end its child
        parent.wait(timeout=5)
        assert wait_for(lambda: gone(child), timeout=5), "the child outlived its parent"
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()


def test_a_parent_that_died_before_the_watch_began_is_noticed():
    # The expected parent is not our parent (it "died" and we were re-parented): exit at once.
    code = "import time, llama_api.workers.lifeline as l; l.watch_parent(parent_pid=1); time.sleep(30)"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], check=False, timeout=20)
    assert result.returncode == 1 and time.monotonic() - started < 10


def test_the_responses_store_closes_when_the_scheduler_fails_to_start(start_app, monkeypatch):
    from llama_api.api import responses_store

    closed = []
    real_close = responses_store.ResponsesStore.close
    monkeypatch.setattr(responses_store.ResponsesStore, "close",
                        lambda self: (closed.append(True), real_close(self)))

    def broken_running(self):
        raise RuntimeError("no task group today")

    monkeypatch.setattr(Scheduler, "running", broken_running)
    # The test client may wrap it in an exception group.
    with pytest.raises(BaseException) as raised, start_app():
        pass
    assert "no task group today" in "".join(traceback.format_exception(raised.value))
    assert closed == [True]
