"""Fixtures for the core's tests: echo models in a folder, the app in-process over them, and a
real server over them for what only a process shows (signals, crashes, shutdown, logs).
Helpers that are not fixtures live in support.py."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

# Under --import-mode=importlib pytest puts no test folder on sys.path: this one goes there,
# for test modules to import support.py (and the other helper modules beside it).
sys.path.insert(0, str(Path(__file__).parent))
from support import echo_server, write_echo_models


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return write_echo_models(tmp_path / "models")


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    return tmp_path / "events.jsonl"


@contextmanager
def in_process(models_dir: Path, events_file: Path, **config):
    """The app in this process (Litestar's test client, lifespan included) over the echo
    models; its workers are real subprocesses. `config`: ServerConfig fields."""
    from litestar.testing import TestClient

    from llama_api.api.app import ServerConfig, create_app
    from llama_api.workers.plugins import Plugins

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLAMA_API_PLUGINS", "echo")
        patch.setenv("LLAMA_API_ECHO_EVENTS", str(events_file))  # the workers inherit it
        app = create_app(ServerConfig(models_dir=models_dir, **config), Plugins())
        with TestClient(app, timeout=60) as client:
            client.v1 = str(client.base_url) + "/v1"
            yield client


@pytest.fixture
def start_app(models_dir, events_file):
    """start_app(**config) runs the app in-process on the echo models (ServerConfig fields)."""
    return lambda **config: in_process(models_dir, events_file, **config)


@pytest.fixture
def client(models_dir, events_file):
    """A fresh in-process app: nothing loaded yet."""
    with in_process(models_dir, events_file) as running:
        yield running


@pytest.fixture(scope="module")
def shared_client(tmp_path_factory):
    """One in-process app for a whole module, for cases that don't care what ran before."""
    folder = tmp_path_factory.mktemp("shared")
    with in_process(write_echo_models(folder / "models"), folder / "events.jsonl") as running:
        yield running


@pytest.fixture
def api(client):
    """The openai package's client, talking to the in-process app of `client`."""
    import openai

    return openai.OpenAI(base_url=client.v1, api_key="unused", http_client=client, max_retries=0)


@pytest.fixture
def start_server(models_dir, events_file):
    """start_server(*args) runs a real server on the echo models (only the echo plugin);
    `address_space` bounds its processes' virtual memory (see `serve`)."""

    def start(*args: str, env: dict | None = None, address_space: int | None = None):
        return echo_server(models_dir, *args, events=events_file, env=env,
                           address_space=address_space)

    return start


@pytest.fixture
def server(start_server):
    """A fresh real server on the echo models (`start_server()` with no options)."""
    with start_server() as running:
        yield running
