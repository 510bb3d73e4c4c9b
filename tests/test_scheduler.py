"""On-demand loading, eviction, parallel workers, queueing, idle unload, crashes, cancel.

Tests that need no settings of their own share one server per module (`one_worker` or
`two_workers`) and leave it as they found it; tests of process lifecycle (shutdown, idle
unload) and of queue bounds start their own.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import anyio
import anyio.lowlevel
import httpx
import openai
import pytest
from support import USER, chat, echo_server, model_status, read_events, wait_for_start

from llama_api.contract.records import ModelSpec
from llama_api.scheduling.entries import Settings
from llama_api.scheduling.scheduler import Scheduler
from llama_api.testing import pid_exists, wait_for
from llama_api.workers.plugins import Plugins

# The models of the shared servers (as in conftest.py's models_dir).
SHARED_MODELS = {"fast": {}, "slow": {"delay": 0.05}, "slower": {"delay": 0.05},
                 "wide": {"delay": 0.05, "slots": 2}}


@contextmanager
def shared_server(folder: Path, *args: str):
    """A server on SHARED_MODELS in `folder`; yields (server, its events file)."""
    with echo_server(folder / "models", *args, models=SHARED_MODELS,
                     events=folder / "events.jsonl") as server:
        yield server, server.events


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory):
    with shared_server(tmp_path_factory.mktemp("one-worker")) as running:
        yield running


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    with shared_server(tmp_path_factory.mktemp("two-workers"), "--max-workers", "2") as running:
        yield running


def spans(events: list[dict]) -> dict[str, tuple[float, float]]:
    """model -> (first start, last end) of its generations."""
    result: dict[str, list[float]] = {}
    for e in events:
        if e["event"] in ("start", "end"):
            result.setdefault(e["model"], []).append(e["time"])
    return {model: (min(times), max(times)) for model, times in result.items()}


class FakeWorker:
    """Stands in for WorkerHandle in scheduler-only tests; `script` says how each start goes."""

    script: ClassVar[list[str]] = []
    started: ClassVar[list[FakeWorker]] = []

    def __init__(self, spec, n_threads, on_exit, open_process=None, node=""):
        self.spec, self.on_exit, self.node = spec, on_exit, node
        self.slots, self.info, self.pid, self.alive = 1, {}, 0, False
        self.local = not node
        self.thread_budget = n_threads

    async def share_cores(self, threads):
        self.thread_budget = threads

    async def start(self, task_group):
        FakeWorker.started.append(self)
        self.pid = len(FakeWorker.started)
        self.alive = True
        if FakeWorker.script.pop(0) == "dies right after loading":
            # The worker said Loaded and then died; the reader task saw both before
            # start() resumed: on_exit ran while the entry had no worker yet.
            self.alive = False
            self.on_exit(self)

    async def stop(self, grace: float = 5.0):
        self.alive = False


def run_scheduler(monkeypatch, script, body, **settings):
    """Run `body(scheduler)` on a real Scheduler whose workers are FakeWorkers."""
    from llama_api.scheduling import scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "WorkerHandle", FakeWorker)
    FakeWorker.script, FakeWorker.started = list(script), []

    async def main():
        async with scheduler_module.Scheduler(scheduler_module.Settings(**settings)).running() as s:
            with anyio.fail_after(5):
                return await body(s)

    return anyio.run(main)


def test_a_worker_that_dies_right_after_loading_is_not_kept(monkeypatch):
    from llama_api import errors
    from llama_api.contract.records import ModelSpec

    spec = ModelSpec(id="m", backend="echo")

    async def body(scheduler):
        try:
            async with scheduler.lease(spec):
                pass
        except errors.BackendUnavailable:
            pass  # failing the request that saw the death is fine
        async with scheduler.lease(spec) as worker:
            return worker.alive

    assert run_scheduler(monkeypatch, ["dies right after loading", "ok", "ok"], body), \
        "a dead worker was kept as the model's worker"


def test_requests_arriving_together_start_different_replicas(monkeypatch):
    from llama_api.contract.records import ModelSpec

    spec = ModelSpec(id="m", backend="echo", replicas=2)

    async def body(scheduler):
        held, release = [], anyio.Event()

        async def request():
            async with scheduler.lease(spec) as worker:
                held.append(worker.spec.id)
                await release.wait()

        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(request)
            while len(held) < 2:
                await anyio.sleep(0.01)
            await anyio.sleep(0.05)  # the third waits for a slot, on the replica least used
            first_two = sorted(held)
            release.set()
        return first_two, sorted(held)

    first_two, all_three = run_scheduler(monkeypatch, ["ok"] * 4, body, max_workers=2)
    assert first_two == ["m", "m#2"]
    assert len(all_three) == 3 and set(all_three) == {"m", "m#2"}
    assert len(FakeWorker.started) == 2


def test_two_models_generate_in_parallel_with_two_workers(two_workers):
    server, events_file = two_workers
    # Load both first, so the measured window is generation only.
    assert chat(server, "slow", 1).status_code == 200
    assert chat(server, "slower", 1).status_code == 200
    events_file.unlink(missing_ok=True)
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda m: chat(server, m, 40), ["slow", "slower"]))
    assert [r.status_code for r in replies] == [200, 200]
    workers = server.health()["workers"]
    assert workers["slow"] != workers["slower"]
    windows = spans(read_events(events_file))
    (a_start, a_end), (b_start, b_end) = windows["slow"], windows["slower"]
    overlap = min(a_end, b_end) - max(a_start, b_start)
    assert overlap > 0.5, f"generations did not overlap: {windows}"  # each takes ~2 s


def test_least_recently_used_idle_worker_is_evicted_at_max_workers(two_workers):
    server, _ = two_workers
    chat(server, "fast", 1)
    chat(server, "slow", 1)
    chat(server, "fast", 1)  # now "slow" is the least recently used
    pids = server.health()["workers"]
    assert sorted(pids) == ["fast", "slow"]
    assert chat(server, "wide", 1).status_code == 200
    health = server.health()
    assert sorted(health["loaded"]) == ["fast", "wide"]
    assert wait_for(lambda: not pid_exists(pids["slow"])), "evicted worker still alive"
    assert pid_exists(pids["fast"])


def test_eviction_at_one_worker_ends_the_previous_process(one_worker):
    server, _ = one_worker
    chat(server, "fast", 1)
    first_pid = server.health()["workers"]["fast"]
    chat(server, "slow", 1)
    assert server.health()["loaded"] == ["slow"]
    assert not pid_exists(first_pid)


def test_concurrent_first_requests_share_one_load(one_worker):
    server, events_file = one_worker
    chat(server, "fast", 1)  # at one worker, this unloads "wide" if a test left it loaded
    assert server.health()["loaded"] == ["fast"]
    events_file.unlink(missing_ok=True)
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: chat(server, "wide", 3), range(4)))
    assert all(r.status_code == 200 for r in replies)
    served_by = {e["pid"] for e in read_events(events_file)}
    assert served_by == {server.health()["workers"]["wide"]}, "more than one worker was loaded"


def test_requests_for_one_model_take_its_slots_one_at_a_time(one_worker):
    server, events_file = one_worker
    chat(server, "slow", 1)
    events_file.unlink(missing_ok=True)
    with ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(lambda _: chat(server, "slow", 5), range(3)))
    assert all(r.status_code == 200 for r in replies)
    events = [e for e in read_events(events_file) if e["event"] in ("start", "end")]
    # One slot: each generation ends before the next starts.
    assert [e["event"] for e in events] == ["start", "end"] * 3


def test_requests_for_one_model_take_its_slots_in_order(monkeypatch):
    """FIFO, observed without timing: each request joins the queue before the next is sent."""
    from llama_api.contract.records import ModelSpec

    spec = ModelSpec(id="m", backend="echo")
    served: list[int] = []

    async def body(scheduler):
        release = anyio.Event()

        async def request(number: int) -> None:
            async with scheduler.lease(spec):
                served.append(number)
                if number == 0:
                    await release.wait()  # holds the one slot while the others queue

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(request, 0)
            while served != [0]:
                await anyio.lowlevel.checkpoint()
            for number in range(1, 6):
                task_group.start_soon(request, number)
                while scheduler._waiting < number:  # it is queued now (the scheduler's count)
                    await anyio.lowlevel.checkpoint()
            release.set()

    run_scheduler(monkeypatch, ["ok"], body)
    assert served == [0, 1, 2, 3, 4, 5]


def test_two_slot_model_runs_two_requests_at_once(one_worker):
    server, events_file = one_worker
    chat(server, "wide", 1)
    events_file.unlink(missing_ok=True)
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda _: chat(server, "wide", 40), range(2)))  # ~2 s each
    assert all(r.status_code == 200 for r in replies)
    starts = [e["time"] for e in read_events(events_file) if e["event"] == "start"]
    ends = [e["time"] for e in read_events(events_file) if e["event"] == "end"]
    assert max(starts) < min(ends), "the two generations did not overlap"


def test_queue_overflow_gets_429_with_retry_after(start_server, events_file):
    with start_server("--max-queue", "0") as server:
        chat(server, "slow", 1)
        events_file.unlink(missing_ok=True)
        with ThreadPoolExecutor(1) as pool:
            busy = pool.submit(chat, server, "slow", 60)  # ~3 s
            assert wait_for_start(events_file, "slow"), "the busy request never started"
            refused = chat(server, "slow", 1)
            assert busy.result().status_code == 200
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "rate_limit_error"


def test_queue_waits_for_a_busy_worker_within_its_bound(one_worker):
    server, events_file = one_worker  # one worker, a queue of 64
    chat(server, "slow", 1)
    events_file.unlink(missing_ok=True)
    with ThreadPoolExecutor(2) as pool:
        busy = pool.submit(chat, server, "slow", 20)
        assert wait_for_start(events_file, "slow"), "the busy request never started"
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


def test_killed_worker_fails_its_stream_and_the_next_request_reloads(one_worker):
    server, _ = one_worker
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


def test_client_disconnect_cancels_generation_in_the_worker(one_worker):
    server, events_file = one_worker
    chat(server, "slow", 1)
    events_file.unlink(missing_ok=True)
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


def test_client_timeout_on_a_plain_request_cancels_it_too(one_worker):
    server, events_file = one_worker
    chat(server, "slow", 1)
    events_file.unlink(missing_ok=True)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.v1 + "/chat/completions", timeout=2,  # gives up after ~40 tokens
                   json={"model": "slow", "messages": USER, "max_tokens": 400})
    assert wait_for(lambda: any(e["event"] == "cancelled" for e in read_events(events_file)))
    cancelled = next(e for e in read_events(events_file) if e["event"] == "cancelled")
    assert cancelled["produced"] < 200  # stopped long before 400 tokens (~20 s)
    assert chat(server, "slow", 2).status_code == 200


def test_a_failing_idle_unload_is_logged_and_the_scheduler_goes_on(models_dir, monkeypatch,
                                                                   caplog):
    monkeypatch.setenv("LLAMA_API_PLUGINS", "echo")
    spec = ModelSpec(id="fast", backend="echo", path=str(models_dir / "fast.echo"), plugin="echo")

    async def main():
        scheduler = Scheduler(Settings(idle_timeout=0.3), plugins=Plugins())
        real_unload, attempts = scheduler._unload, []

        async def unload_failing_once(entry, reason="request"):
            attempts.append(reason)
            if len(attempts) == 1:
                raise RuntimeError("the worker would not stop")
            await real_unload(entry, reason)

        scheduler._unload = unload_failing_once
        async with scheduler.running():
            async with scheduler.lease(spec):
                pass
            with anyio.fail_after(10):
                while "fast" in scheduler.entries or len(attempts) < 2:
                    await anyio.sleep(0.05)
            return attempts

    assert anyio.run(main)[:2] == ["idle", "idle"]  # tried again after the failure
    assert "unloading idle model fast failed" in caplog.text


def test_shutdown_ends_every_worker(start_server):
    with start_server("--max-workers", "2") as server:
        chat(server, "fast", 1)
        chat(server, "slow", 1)
        pids = list(server.health()["workers"].values())
    assert all(wait_for(lambda p=p: not pid_exists(p)) for p in pids)


def test_a_crash_fails_only_the_request_it_was_serving(one_worker):
    server, events_file = one_worker
    chat(server, "slow", 1)
    pid = server.health()["workers"]["slow"]
    events_file.unlink(missing_ok=True)
    with ThreadPoolExecutor(2) as pool:
        serving = pool.submit(chat, server, "slow", 100)  # ~5 s
        assert wait_for_start(events_file, "slow"), "the first request never started generating"
        queued = pool.submit(chat, server, "slow", 3)  # waits for the slot
        assert wait_for(lambda: model_status(server, "slow")["queued"] == 1), "never queued"
        os.kill(pid, signal.SIGKILL)
        failed, succeeded = serving.result(), queued.result()
    assert failed.status_code == 503
    assert failed.json()["error"]["code"] == "worker_crashed"
    assert succeeded.status_code == 200, succeeded.text
    assert server.health()["workers"]["slow"] != pid


def test_busy_workers_share_the_cores_and_a_lone_one_gets_them_all(start_server, events_file):
    from llama_api.scheduling.entries import available_cores

    cores = available_cores()
    if cores < 2:
        pytest.skip("one core: nothing to share")
    with start_server("--max-workers", "2") as server:
        chat(server, "slow", 1)
        chat(server, "slower", 1)  # both loaded, idle

        def budgets(model):
            card = httpx.get(server.v1 + f"/models/{model}", timeout=10).json()
            return card["worker"]["info"]["budgets"]

        with ThreadPoolExecutor(2) as pool:
            alone = pool.submit(chat, server, "slow", 40)  # ~2 s
            assert wait_for(lambda: len(read_events(events_file)) > 4, timeout=10)
            time.sleep(0.3)
            both = pool.submit(chat, server, "slower", 10)  # runs while slow still does
            assert both.result().status_code == 200 and alone.result().status_code == 200
        assert wait_for(lambda: budgets("slow") and budgets("slower"), timeout=10)
        # slow ran alone with every core, then shared them while slower ran too
        assert budgets("slow")[:2] == [cores, cores // 2], budgets("slow")
        assert cores // 2 in budgets("slower"), budgets("slower")
