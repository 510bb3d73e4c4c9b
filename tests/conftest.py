"""Fixtures for the core's tests: echo models in a folder, and a real server over them."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest

from llama_api.testing import serve


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """A models folder with echo models: fast, slow (0.05 s/token), and two-slot."""
    folder = tmp_path / "models"
    folder.mkdir()
    models = {
        "fast": {},
        "slow": {"delay": 0.05},
        "slower": {"delay": 0.05},
        "wide": {"delay": 0.05, "slots": 2},
        "broken": {"fail_load": "weights are corrupt"},
        "noisy": {"noisy": True},
    }
    for name, options in models.items():
        (folder / f"{name}.echo").write_text(json.dumps(options))
    return folder


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    return tmp_path / "events.jsonl"


@pytest.fixture
def start_server(models_dir, events_file):
    """start_server(*args) runs a real server on the echo models (only the echo plugin)."""

    @contextmanager
    def start(*args: str, env: dict | None = None):
        environment = {"LLAMA_API_PLUGINS": "echo", "LLAMA_API_ECHO_EVENTS": str(events_file),
                       **(env or {})}
        with serve("--models-dir", str(models_dir), *args, env=environment) as server:
            yield server

    return start


@pytest.fixture
def server(start_server):
    with start_server() as running:
        yield running
