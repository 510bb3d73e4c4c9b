"""Against a real server: the admin event stream (server-sent events, read as they come), and
the client functions behind `llama-api ps / load / unload`."""

from __future__ import annotations

import io
import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from llama_api.cli import admin_client
from llama_api_echo import chat

KEY = "the-only-key"  # no admin key set: /admin takes the API key


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from llama_api.testing import serve

    models = tmp_path_factory.mktemp("admin") / "models"
    models.mkdir()
    for name in ("fast", "slow"):
        (models / f"{name}.echo").write_text(json.dumps({}))
    with serve("--models-dir", str(models), "--api-key", KEY,
               env={"LLAMA_API_PLUGINS": "echo"}) as running:
        yield running


def read_events(server, count: int, trigger) -> list[dict]:
    """Connect to /admin/events, run `trigger()` once subscribed, return `count` events."""
    events = []
    with httpx.stream("GET", server.url + "/admin/events", timeout=30,
                      headers={"Authorization": f"Bearer {KEY}"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        assert next(lines) == ": connected"  # subscribed: nothing from now on is missed
        with ThreadPoolExecutor(1) as pool:
            done = pool.submit(trigger)
            name = None
            for line in lines:
                if line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    event = json.loads(line.removeprefix("data: "))
                    assert event["type"] == name
                    events.append(event)
                    if len(events) == count:
                        break
            done.result()
    return events


def test_events_tell_loads_and_evictions_as_they_happen(server):
    httpx.post(server.url + "/admin/models/fast/unload", headers={"Authorization": f"Bearer {KEY}"})
    httpx.post(server.url + "/admin/models/slow/unload", headers={"Authorization": f"Bearer {KEY}"})

    def two_models_one_worker():
        assert chat(server, "fast", 1).status_code == 401  # no key: refused, no event
        for model in ("fast", "slow"):
            assert httpx.post(server.v1 + "/chat/completions", timeout=60,
                              headers={"Authorization": f"Bearer {KEY}"},
                              json={"model": model, "max_tokens": 1,
                                    "messages": [{"role": "user", "content": "hi"}]}
                              ).status_code == 200

    events = read_events(server, 5, two_models_one_worker)
    assert [(e["type"], e["model"]) for e in events] == [
        ("loading", "fast"), ("loaded", "fast"),
        ("unloaded", "fast"), ("loading", "slow"), ("loaded", "slow")]  # one worker: evicted
    evicted = next(e for e in events if e["type"] == "unloaded")
    assert evicted["reason"] == "evicted" and evicted["pid"] > 0
    loaded = next(e for e in events if e["type"] == "loaded")
    assert loaded["seconds"] > 0 and loaded["slots"] == 1 and loaded["time"] > 0


def test_the_client_loads_lists_and_unloads(server):
    out = io.StringIO()
    assert admin_client.load_command(server.url, "fast", KEY, pin=True, out=out) == 0
    assert out.getvalue().startswith("fast loaded in ") and "pinned" in out.getvalue()
    out = io.StringIO()
    assert admin_client.ps_command(server.url, KEY, out=out) == 0
    header, *rows = [re.split(r"\s{2,}", line) for line in out.getvalue().splitlines()]
    assert header == ["MODEL", "STATE", "PID", "MEMORY", "SLOTS", "QUEUED", "PINNED", "LAST USED"]
    fast = next(row for row in rows if row[0] == "fast")
    assert fast[1] == "loaded" and fast[2] == str(server.health()["workers"]["fast"])
    assert fast[4] == "0/1" and fast[6] == "yes" and fast[3].endswith("iB")
    out = io.StringIO()
    assert admin_client.unload_command(server.url, "fast", KEY, out=out) == 0
    assert out.getvalue() == "fast unloaded\n"
    assert "fast" not in server.health()["loaded"]
    out = io.StringIO()
    admin_client.ps_command(server.url, KEY, out=out)
    assert "(no model loaded)" in out.getvalue()


def test_the_client_reports_errors_with_their_message(server, capsys):
    assert admin_client.load_command(server.url, "nope", KEY) == 1
    assert "404" in capsys.readouterr().err
    assert admin_client.ps_command(server.url, "wrong-key") == 1
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


def test_the_cli_commands_drive_a_running_server(server, monkeypatch, capsys):
    from llama_api.cli.main import main

    monkeypatch.setenv("LLAMA_API_KEYS", KEY)  # ps/load/unload take the first API key
    monkeypatch.delenv("LLAMA_API_ADMIN_KEY", raising=False)
    assert main(["load", "--url", server.url, "--pin", "fast"]) == 0
    assert capsys.readouterr().out.startswith("fast loaded")
    assert main(["ps", "--url", server.url]) == 0
    table = capsys.readouterr().out
    [row] = [line for line in table.splitlines() if line.startswith("fast")]
    assert "loaded" in row and str(server.health()["workers"]["fast"]) in row
    assert main(["unload", "--url", server.url, "fast"]) == 0
    assert "fast" not in server.health()["loaded"]
    monkeypatch.setenv("LLAMA_API_KEYS", "wrong")
    assert main(["ps", "--url", server.url]) != 0
