"""Fixes from the review of the core: the registry swapped while it is read, admin keys off the command line and secrets out of workers, one token-id
bound, a model's bad tool arguments, and the scheduler surviving a failed idle unload."""

from __future__ import annotations

import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import httpx
import pytest

from llama_api import errors
from llama_api.api.state import server_state
from llama_api.contract.records import ModelSpec
from llama_api.scheduling.entries import Settings
from llama_api.scheduling.registry import Registry
from llama_api.scheduling.scheduler import Scheduler
from llama_api.workers.plugins import Plugins
from llama_api_echo import USER

# -- the registry -------------------------------------------------------------------------

class ListedSource:
    """A registry source whose discovery returns a fixed list (no plugin, no files read)."""

    def __init__(self, models_dir: Path, specs: list[ModelSpec]):
        self.models_dir = models_dir
        self._specs = specs

    def specs(self) -> list[ModelSpec]:
        return list(self._specs)


def test_names_resolve_while_rescans_in_threads_swap_the_catalog(tmp_path):
    specs = [ModelSpec(id=f"m{i}", backend="echo", aliases=[f"alias{i}"]) for i in range(3000)]
    registry = Registry(specs, ListedSource(tmp_path, specs))
    stop, failures = threading.Event(), []

    def rescan_until_stopped():
        while not stop.is_set():
            registry.rescan()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: a half-built catalog would show
    rescanners = [threading.Thread(target=rescan_until_stopped) for _ in range(2)]
    try:
        for thread in rescanners:
            thread.start()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            for name, model_id in (("m2999", "m2999"), ("alias1500", "m1500")):
                try:
                    assert registry.resolve(name).id == model_id
                except (errors.ModelNotFound, KeyError, AssertionError) as exc:  # 404, 500
                    failures.append(repr(exc))
    finally:
        stop.set()
        for thread in rescanners:
            thread.join()
        sys.setswitchinterval(interval)
    assert failures == []
    assert len(registry.known) == 3000


class SlowSource(ListedSource):
    """A source whose discovery blocks until released: a rescan held in the middle."""

    def __init__(self, models_dir: Path, specs: list[ModelSpec]):
        super().__init__(models_dir, specs)
        self.scanning, self.release = threading.Event(), threading.Event()

    def specs(self) -> list[ModelSpec]:
        self.scanning.set()
        assert self.release.wait(10)
        return super().specs()


def test_a_name_asked_for_during_a_rescan_waits_for_the_new_catalog(tmp_path):
    # CI once read the old catalog here: the first rescan had already recorded the folder as
    # scanned, so a second caller saw "unchanged" and answered 404 for the model just added.
    source = SlowSource(tmp_path, [ModelSpec(id="old", backend="echo")])
    registry = Registry(list(source._specs), source)
    source._specs.append(ModelSpec(id="new", backend="echo"))
    (tmp_path / "new.echo").write_text("{}")
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(registry.resolve, "new")
        assert source.scanning.wait(10)
        second = pool.submit(registry.resolve, "new")
        time.sleep(0.2)  # the second caller is now at the lock, or (the bug) answered already
        assert not second.done()
        source.release.set()
        assert first.result(10).id == "new"
        assert second.result(10).id == "new"


def test_rescans_not_asked_for_by_admin_publish_model_events_too(client, models_dir):
    seen = []
    server_state(client.app).events.listen(lambda event: seen.append((event.kind, event.model)))
    (models_dir / "listed.echo").write_text("{}")
    models = client.get("/admin/models").json()["models"]  # the listing finds it
    assert "listed" in {m["id"] for m in models}
    assert ("model_added", "listed") in seen
    (models_dir / "resolved.echo").write_text("{}")
    (models_dir / "noisy.echo").unlink()
    reply = client.post(client.v1 + "/chat/completions",  # an unknown name makes it look
                        json={"model": "resolved", "messages": USER, "max_tokens": 2})
    assert reply.status_code == 200, reply.text
    assert ("model_added", "resolved") in seen and ("model_removed", "noisy") in seen
    assert client.post("/admin/rescan").json()["added"] == []
    assert [kind for kind, model in seen if model == "resolved"].count("model_added") == 1


# -- the scheduler's background work ------------------------------------------------------

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


# -- keys and secrets ---------------------------------------------------------------------

def worker_environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")
def test_admin_keys_from_a_file_and_the_environment_and_no_secrets_in_workers(
        start_server, tmp_path):
    key_file = tmp_path / "admin-keys"
    key_file.write_text("# operators\nfile-admin-key\n")
    env = {"LLAMA_API_KEYS": "api-key", "LLAMA_API_ADMIN_KEY": "env-admin-key",
           "HF_TOKEN": "hf-token"}
    with start_server("--admin-key-file", str(key_file), env=env) as server:
        def admin(key):
            return httpx.get(server.url + "/admin/models",
                             headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert admin("api-key").status_code == 403
        assert admin("file-admin-key").status_code == 200
        assert admin("env-admin-key").status_code == 200
        loaded = httpx.post(server.url + "/admin/models/fast/load", timeout=60,
                            headers={"Authorization": "Bearer env-admin-key"})
        assert loaded.status_code == 200, loaded.text
        environment = worker_environment(loaded.json()["pid"])
    assert "LLAMA_API_KEYS" not in environment and "LLAMA_API_ADMIN_KEY" not in environment
    assert environment.get("HF_TOKEN") == "hf-token"  # a backend may download from the Hub


def test_an_unreadable_admin_key_file_is_refused_at_start(tmp_path, capsys):
    from llama_api.cli.main import main

    assert main(["serve", "--admin-key-file", str(tmp_path / "missing")]) == 2
    assert "--admin-key-file" in capsys.readouterr().err


# -- request bounds and model output ------------------------------------------------------

@pytest.mark.parametrize("body", [
    {"prompt": [1, 2**31]},
    {"prompt": [[5, 2**40]]},
    {"prompt": "hi", "logit_bias": {str(2**31): 1}},
])
def test_a_token_id_past_32_bits_is_a_400_naming_the_field(shared_client, body):
    reply = shared_client.post(shared_client.v1 + "/completions",
                               json={"model": "fast", "max_tokens": 1, **body})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"].startswith(("prompt", "logit_bias")), error
    assert "2147483647" in error["message"]  # the schema's bound, not a backend's refusal


def test_tool_arguments_that_are_not_an_object_are_a_503_naming_the_tool():
    from llama_api.api.anthropic import tool_input

    call = {"id": "c", "function": {"name": "get_weather", "arguments": "[1, 2]"}}
    with pytest.raises(errors.BackendUnavailable, match="get_weather") as raised:
        tool_input(call)
    assert (raised.value.status, raised.value.code) == (503, "invalid_tool_arguments")
    assert tool_input({"function": {"name": "f", "arguments": ""}}) == {}
