"""Against a real server: the admin event stream (server-sent events, read as they come), and
the client functions behind `llama-api ps / load / unload`."""

from __future__ import annotations

import io
import re

import httpx
import pytest
from support import admin_events, chat, echo_server

from llama_api.cli import admin_client

KEY = "the-only-key"  # no admin key set: /admin takes the API key


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory):
    """A server on two echo models that takes the API key KEY (for /admin too)."""
    models = tmp_path_factory.mktemp("admin") / "models"
    with echo_server(models, "--api-key", KEY, models={"fast": {}, "slow": {}}) as running:
        yield running


def test_events_tell_loads_and_evictions_as_they_happen(admin_server):
    httpx.post(admin_server.url + "/admin/models/fast/unload",
               headers={"Authorization": f"Bearer {KEY}"})
    httpx.post(admin_server.url + "/admin/models/slow/unload",
               headers={"Authorization": f"Bearer {KEY}"})

    def two_models_one_worker():
        assert chat(admin_server, "fast", 1).status_code == 401  # no key: refused, no event
        for model in ("fast", "slow"):
            assert httpx.post(admin_server.v1 + "/chat/completions", timeout=60,
                              headers={"Authorization": f"Bearer {KEY}"},
                              json={"model": model, "max_tokens": 1,
                                    "messages": [{"role": "user", "content": "hi"}]}
                              ).status_code == 200

    events, _ = admin_events(admin_server, two_models_one_worker,
                             lambda events: len(events) == 5,
                             headers={"Authorization": f"Bearer {KEY}"})
    assert [(e["type"], e["model"]) for e in events] == [
        ("loading", "fast"), ("loaded", "fast"),
        ("unloaded", "fast"), ("loading", "slow"), ("loaded", "slow")]  # one worker: evicted
    evicted = next(e for e in events if e["type"] == "unloaded")
    assert evicted["reason"] == "evicted" and evicted["pid"] > 0
    loaded = next(e for e in events if e["type"] == "loaded")
    assert loaded["seconds"] > 0 and loaded["slots"] == 1 and loaded["time"] > 0


def test_the_client_loads_lists_and_unloads(admin_server):
    out = io.StringIO()
    assert admin_client.load_command(admin_server.url, "fast", KEY, pin=True, out=out) == 0
    assert out.getvalue().startswith("fast loaded in ") and "pinned" in out.getvalue()
    out = io.StringIO()
    assert admin_client.ps_command(admin_server.url, KEY, out=out) == 0
    header, *rows = [re.split(r"\s{2,}", line) for line in out.getvalue().splitlines()]
    assert header == ["MODEL", "STATE", "NODE", "PID", "MEMORY", "SLOTS", "QUEUED", "PINNED",
                      "LAST USED"]
    fast = next(row for row in rows if row[0] == "fast")
    assert fast[1] == "loaded" and fast[2] == "local"
    assert fast[3] == str(admin_server.health()["workers"]["fast"])
    assert fast[5] == "0/1" and fast[7] == "yes" and fast[4].endswith("iB")
    out = io.StringIO()
    assert admin_client.unload_command(admin_server.url, "fast", KEY, out=out) == 0
    assert out.getvalue() == "fast unloaded\n"
    assert "fast" not in admin_server.health()["loaded"]
    out = io.StringIO()
    admin_client.ps_command(admin_server.url, KEY, out=out)
    assert "(no model loaded)" in out.getvalue()


def test_the_client_reports_errors_with_their_message(admin_server, capsys):
    assert admin_client.load_command(admin_server.url, "nope", KEY) == 1
    assert "404" in capsys.readouterr().err
    assert admin_client.ps_command(admin_server.url, "wrong-key") == 1
    assert "401: Missing or wrong API key" in capsys.readouterr().err
    assert admin_client.ps_command("http://127.0.0.1:9", KEY) == 1
    assert "cannot reach the server" in capsys.readouterr().err


def test_the_key_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("LLAMA_API_ADMIN_KEY", raising=False)
    monkeypatch.setenv("LLAMA_API_KEYS", " first , second")
    assert admin_client.key_from_environment() == "first"
    monkeypatch.setenv("LLAMA_API_ADMIN_KEY", "admin")
    assert admin_client.key_from_environment() == "admin"
    monkeypatch.delenv("LLAMA_API_KEYS")
    monkeypatch.delenv("LLAMA_API_ADMIN_KEY")
    assert admin_client.key_from_environment() is None


def test_the_cli_commands_drive_a_running_server(admin_server, monkeypatch, capsys):
    from llama_api.cli.main import main

    monkeypatch.setenv("LLAMA_API_KEYS", KEY)  # ps/load/unload take the first API key
    monkeypatch.delenv("LLAMA_API_ADMIN_KEY", raising=False)
    assert main(["load", "--url", admin_server.url, "--pin", "fast"]) == 0
    assert capsys.readouterr().out.startswith("fast loaded")
    assert main(["ps", "--url", admin_server.url]) == 0
    table = capsys.readouterr().out
    [row] = [line for line in table.splitlines() if line.startswith("fast")]
    assert "loaded" in row and str(admin_server.health()["workers"]["fast"]) in row
    assert main(["unload", "--url", admin_server.url, "fast"]) == 0
    assert "fast" not in admin_server.health()["loaded"]
    monkeypatch.setenv("LLAMA_API_KEYS", "wrong")
    assert main(["ps", "--url", admin_server.url]) != 0
