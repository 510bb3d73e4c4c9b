"""The model registry: a changed models folder is rescanned while models.toml stays
authoritative; names resolve while rescans in other threads swap the catalog, and a name
asked for during a rescan waits for the new catalog; every rescan, asked for by the admin
API or not, publishes the models added and removed."""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from support import chat

from llama_api import errors
from llama_api.api.state import server_state
from llama_api.contract.records import ModelSpec
from llama_api.scheduling.registry import Registry, in_hidden_folder
from llama_api.workers.plugins import Plugins


def test_the_registry_rescans_a_changed_folder_and_models_toml_stays_authoritative(
        tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA_API_PLUGINS", "echo")
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "one.echo").write_text("{}")
    (tmp_path / "configured.echo").write_text("{}")
    config = tmp_path / "models.toml"
    config.write_text('[models.two]\nbackend = "echo"\npath = "configured.echo"\n'
                      "options = { delay = 0.5 }\n")
    registry = Registry.build(Plugins(), folder, config)
    assert set(registry.models) == {"one", "two"}

    (folder / "two.echo").write_text("{}")  # the configured model's id
    (folder / "three.echo").write_text("{}")
    assert registry.resolve("three").path == str(folder / "three.echo")  # an unknown name: rescan
    assert set(registry.models) == {"one", "two", "three"}
    assert registry.models["two"].options == {"delay": 0.5}
    (folder / "one.echo").unlink()
    assert set(registry.models) == {"two", "three"}

    assert in_hidden_folder(str(folder / ".pull" / "x.gguf"), folder)  # a pull in progress
    assert not in_hidden_folder(str(folder / "ggml" / "x.gguf"), folder)
    assert not in_hidden_folder("/elsewhere/.hidden/x.gguf", folder)


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
    reply = chat(client, "resolved", 2)  # an unknown name makes it look
    assert reply.status_code == 200, reply.text
    assert ("model_added", "resolved") in seen and ("model_removed", "noisy") in seen
    assert client.post("/admin/rescan").json()["added"] == []
    assert [kind for kind, model in seen if model == "resolved"].count("model_added") == 1
