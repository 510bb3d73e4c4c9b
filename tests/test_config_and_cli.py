"""models.toml, plugin discovery, and the llama-api command line."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import httpx
import pytest

from llama_api.cli import main as cli
from llama_api.cli.install import PINS
from llama_api.scheduling.registry import ConfigError, Registry, read_config
from llama_api.workers.plugins import Plugins


def llama_api(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "llama_api", *args], capture_output=True,
                          check=False, text=True, timeout=120, env={**os.environ, **(env or {})})


def write(path, text: str):
    path.write_text(textwrap.dedent(text))
    return path


def test_config_defines_models_with_aliases_and_options(tmp_path, models_dir):
    config = write(tmp_path / "models.toml", f"""
        [models.chat]
        backend = "echo"
        path = "{models_dir / 'slow.echo'}"
        aliases = ["gpt-3.5-turbo"]
        idle_timeout = 30
        slots = 2
        [models.chat.options]
        delay = 0.0
    """)
    specs = read_config(config, {"echo": "echo"})
    assert len(specs) == 1
    spec = specs[0]
    assert (spec.id, spec.backend, spec.aliases, spec.slots) == ("chat", "echo", ["gpt-3.5-turbo"], 2)
    assert spec.options == {"delay": 0.0} and spec.idle_timeout == 30
    registry = Registry(specs)
    assert registry.resolve("gpt-3.5-turbo").id == "chat"


def test_an_alias_never_hides_another_models_id():
    from llama_api.contract.records import ModelSpec

    registry = Registry([
        ModelSpec(id="chat", backend="echo", aliases=["fast", "gpt-4o"]),
        ModelSpec(id="fast", backend="echo"),
    ])
    assert registry.resolve("fast").id == "fast"
    assert registry.resolve("gpt-4o").id == "chat"


@pytest.mark.parametrize("body,expected", [
    ('[models.a]\nbackend = "nope"\n', ["models.toml", "'a'", "backend", "nope"]),
    ('[models.b]\nbackend = "echo"\nslots = "many"\n', ["models.toml", "'b'", "slots"]),
    ('[models.c]\nbackend = "echo"\ncolour = "red"\n', ["models.toml", "'c'", "colour"]),
    ('[models.d]\npath = "x"\n', ["models.toml", "'d'", "backend"]),
    ('[models.e]\nbackend = "echo"\nslots = 0\n', ["models.toml", "'e'", "slots"]),
    ('[models.f]\nbackend = "echo"\nmax_tokens = 0\n', ["models.toml", "'f'", "max_tokens"]),
    ('[models.g]\nbackend = "echo"\nreplicas = 0\n', ["models.toml", "'g'", "replicas"]),
    ('[models.h]\nbackend = "echo"\nresources = {gpu_box = -1}\n', ["'h'", "resources"]),
    ("[models\n", ["models.toml", "TOML"]),
])
def test_invalid_config_names_file_model_and_field(tmp_path, body, expected):
    config = tmp_path / "models.toml"
    config.write_text(body)
    with pytest.raises(ConfigError) as info:
        read_config(config, {"echo": "echo"})
    for word in expected:
        assert word in str(info.value)


def test_serve_refuses_an_invalid_config_with_a_clear_message(tmp_path, models_dir):
    config = write(tmp_path / "models.toml", '[models.x]\nbackend = "echo"\nslots = "two"\n')
    result = llama_api("serve", "--config", str(config), "--models-dir", str(models_dir),
                       env={"LLAMA_API_PLUGINS": "echo"})
    assert result.returncode == 2
    assert "models.toml" in result.stderr and "'x'" in result.stderr and "slots" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_models_max_tokens_caps_every_answer_and_is_the_default(start_app, tmp_path,
                                                                  models_dir):
    config = write(tmp_path / "models.toml", f"""
        [models.capped]
        backend = "echo"
        path = "{models_dir / 'fast.echo'}"
        max_tokens = 3
    """)
    words = "a b c d e f g h"
    with start_app(config=config) as client:
        for asked in (50, None, 2):
            body = {"model": "capped", "prompt": words, **({"max_tokens": asked} if asked else {})}
            reply = client.post("/v1/completions", json=body).json()
            expected = min(asked or 3, 3)
            assert reply["usage"]["completion_tokens"] == expected
            assert reply["choices"][0]["text"].split() == words.split()[:expected]
            assert reply["choices"][0]["finish_reason"] == "length"
        # Anthropic clients send max_tokens 32000: the answer stops at the cap too.
        reply = client.post("/v1/messages", json={
            "model": "capped", "max_tokens": 32000,
            "messages": [{"role": "user", "content": words}]}).json()
        assert reply["usage"]["output_tokens"] == 3 and reply["stop_reason"] == "max_tokens"


def test_configured_model_is_served_under_its_alias(start_app, tmp_path, models_dir):
    config = write(tmp_path / "models.toml", f"""
        [models.assistant]
        backend = "echo"
        path = "{models_dir / 'fast.echo'}"
        aliases = ["gpt-4o"]
    """)
    with start_app(config=config) as client:
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert "assistant" in ids and "fast" in ids
        reply = client.post("/v1/completions",
                            json={"model": "gpt-4o", "prompt": "a b", "max_tokens": 2})
        assert reply.status_code == 200 and reply.json()["choices"][0]["text"] == "a b"


def test_plugins_are_found_through_entry_points():
    plugins = Plugins()
    assert "echo" in plugins.names()
    assert plugins.backends()["echo"] == "echo"


def test_llama_api_plugins_limits_which_plugins_load(monkeypatch):
    monkeypatch.setenv("LLAMA_API_PLUGINS", "nothing-by-this-name")
    assert Plugins().names() == []


@pytest.fixture
def broken_plugin_site(tmp_path):
    """A folder holding a real distribution whose entry point raises on import."""
    site = tmp_path / "site"
    dist = site / "llama_api_broken-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: llama-api-broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[llama_api]\nbroken = llama_api_broken_plugin\n")
    (site / "llama_api_broken_plugin.py").write_text("raise ImportError('needs libfoo')\n")
    return site


def test_a_plugin_that_fails_to_import_is_listed_as_broken(broken_plugin_site, models_dir):
    env = {"PYTHONPATH": str(broken_plugin_site), "LLAMA_API_PLUGINS": "echo,broken"}
    result = llama_api("models", "--models-dir", str(models_dir), env=env)
    assert result.returncode == 0, result.stderr
    assert "broken" in result.stdout and "BROKEN" in result.stdout and "needs libfoo" in result.stdout
    assert "fast" in result.stdout and "echo" in result.stdout


def test_server_starts_with_a_broken_plugin_and_health_lists_it(start_server, broken_plugin_site):
    with start_server(env={"PYTHONPATH": str(broken_plugin_site), "LLAMA_API_PLUGINS": "echo,broken"}) as server:
        health = server.health()
        assert health["plugins"] == ["echo"]
        assert "needs libfoo" in health["broken_plugins"]["broken"]
        reply = httpx.post(server.v1 + "/completions", timeout=30,  # loads a worker
                           json={"model": "fast", "prompt": "a"})
        assert reply.status_code == 200


def test_help_reads_well(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    for option in ("--max-workers", "--max-queue", "--idle-timeout", "--api-key",
                   "--models-dir", "--config", "--log-level", "--port", "--host"):
        assert option in printed


@pytest.mark.parametrize("plugin,flags,expected", [
    ("exllama", [], ["torch", "plugins/exllama[v2,v3]"]),
    ("embeddings", [], [PINS["torch"], "plugins/embeddings"]),
    ("embeddings", ["--skip-torch-install"], ["plugins/embeddings"]),
    ("llamacpp", ["--force-cuda"], ["GGML_CUDA=on", "plugins/llamacpp", "--force-reinstall"]),
    ("tfhub", [], [PINS["torch"], PINS["tensorflow"], "plugins/embeddings"]),
])
def test_install_plans_the_right_pip_commands(plugin, flags, expected, capsys):
    assert cli.main(["install", plugin, "--dry-run", *flags]) == 0
    printed = capsys.readouterr().out
    for word in expected:
        assert word in printed
    if "--skip-torch-install" in flags:
        assert "torch" not in printed.replace("--skip-torch-install", "")
    # TF Hub SavedModel folders load with TensorFlow alone.
    assert "tf-keras" not in printed and "tensorflow-hub" not in printed and "setuptools" not in printed


def test_install_as_a_command_prints_its_plan():
    result = llama_api("install", "embeddings", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"pip install {PINS['torch']}" in result.stdout


def test_install_refuses_an_unknown_plugin():
    result = llama_api("install", "nonsense")
    assert result.returncode != 0
    assert "invalid choice" in result.stderr


def test_json_logs_are_one_object_per_line(start_server):
    import json

    with start_server("--log-format", "json") as server:
        httpx.post(server.v1 + "/completions", timeout=30,  # loads a worker
                   json={"model": "fast", "prompt": "a", "max_tokens": 1})
        lines = [line for line in server.log().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert any(r["logger"] == "llama_api.scheduling.scheduler" for r in records)
    assert any(r["logger"] == "llama_api.workers.child.fast" for r in records)  # the worker's lines too
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)


def test_a_worker_error_shows_at_the_servers_warning_level(start_server):
    import json

    with start_server("--log-level", "warning", "--log-format", "json") as server:
        reply = httpx.post(server.v1 + "/chat/completions", timeout=30,  # the backend raises
                           json={"model": "fast", "messages": [{"role": "user", "content": "RAISE"}]})
        assert reply.status_code == 503, reply.text
        # A backend that prints on fd 1, as C libraries do: plain lines, logged at INFO.
        assert httpx.post(server.v1 + "/completions", timeout=30,
                          json={"model": "noisy", "prompt": "a", "max_tokens": 2}).status_code == 200
    log = server.log()  # complete now: the server and its workers have exited
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    failures = [r for r in records if r["logger"] == "llama_api.workers.child.fast"
                and "RuntimeError: echo was asked to fail" in r["message"]]
    assert len(failures) == 1, log
    assert failures[0]["level"] == "ERROR"
    assert "Traceback (most recent call last)" in failures[0]["message"]  # one record, whole
    assert all(r["level"] in ("WARNING", "ERROR", "CRITICAL") for r in records), log
    assert "noise on stdout" not in log
