"""GET /admin/models/ID while models load and unload: never a 5xx, and each answer describes one
consistent entry (the fuzzer once saw a 500 there while its admin actions churned models)."""

from __future__ import annotations

import json
import os
import threading
import time

import anyio

from llama_api.api.admin import model_status
from llama_api.contract.records import ModelSpec
from llama_api.scheduling.entries import Entry, Settings
from llama_api.scheduling.scheduler import Scheduler
from llama_api.workers.handle import WorkerProcess
from llama_api_echo import USER

LOADS = 12  # hammer until the churn has loaded this many times (60 s at most)


def consistency_problem(status: dict) -> str | None:
    """Why this status contradicts itself (None when it doesn't)."""
    state, pid, slots = status["state"], status["pid"], status["slots"]
    if state in ("loaded", "unloading") and (pid is None or slots is None):
        return f"{state} without a pid or slots"
    if state in ("unloaded", "failed") and (pid is not None or slots is not None):
        return f"{state} with a pid or slots"
    if state == "loading" and slots is not None:
        return "loading with slots"
    return None


def test_a_model_unloading_while_it_loads_again_is_shown_as_the_unloading_one():
    spec = ModelSpec(id="m", backend="echo", path="m.echo", plugin="echo")
    scheduler = Scheduler(Settings(max_workers=2))
    leaving = Entry(spec=spec, process=WorkerProcess(spec, 1, on_exit=lambda _: None),
                    slots=anyio.Semaphore(1))
    leaving.process.pid = os.getpid()
    leaving.ready.set()
    coming = Entry(spec=spec, process=WorkerProcess(spec, 1, on_exit=lambda _: None))
    scheduler.unloading[spec.id], scheduler.entries[spec.id] = leaving, coming
    status = model_status(spec, scheduler)
    assert status["state"] == "unloading"
    assert status["pid"] == os.getpid() and status["slots"] == 1
    assert consistency_problem(status) is None


def test_model_status_never_fails_while_models_load_and_unload(start_app, models_dir):
    (models_dir / "sluggish.echo").write_text(json.dumps({"load_delay": 0.05}))
    problems: list[str] = []
    actions = {"load": 0}
    stop = threading.Event()
    with start_app(scheduling=Settings(max_workers=2)) as client:
        def churn(model: str) -> None:
            while not stop.is_set():
                for action, body in (("load", None), ("unload", {"force": True})):
                    answer = client.post(f"/admin/models/{model}/{action}", json=body)
                    if answer.status_code >= 500:
                        problems.append(f"{action} {model}: {answer.status_code} {answer.text}")
                    actions["load"] += action == "load"

        def chat() -> None:  # requests that evict and reload models meanwhile
            while not stop.is_set():
                answer = client.post("/v1/chat/completions", json={
                    "model": "sluggish", "messages": USER, "max_tokens": 2})
                if answer.status_code >= 500:
                    problems.append(f"chat: {answer.status_code} {answer.text}")

        threads = [threading.Thread(target=churn, args=(model,)) for model in ("fast", "wide")]
        threads.append(threading.Thread(target=chat))
        for thread in threads:
            thread.start()
        try:
            started = time.monotonic()
            while actions["load"] < LOADS and time.monotonic() - started < 60:
                for model in ("fast", "wide", "sluggish"):
                    answer = client.get(f"/admin/models/{model}")
                    if answer.status_code != 200:
                        problems.append(f"GET {model}: {answer.status_code} {answer.text}")
                    elif problem := consistency_problem(answer.json()):
                        problems.append(f"GET {model}: {problem}: {answer.json()}")
                listing = client.get("/admin/models")
                if listing.status_code != 200:
                    problems.append(f"GET /admin/models: {listing.status_code} {listing.text}")
        finally:
            stop.set()
            for thread in threads:
                thread.join()
    assert not problems, "\n".join(problems[:10])
    assert actions["load"] >= LOADS, "the models hardly changed state: the test exercised nothing"
