"""The client side of the admin API, for `llama-api ps`, `llama-api load ID`, `llama-api unload ID`.

Standard library only (urllib): the commands run where the server's dependencies may not be.
The key comes from `--admin-key`-less environments too: LLAMA_API_ADMIN_KEY, else the first
of LLAMA_API_KEYS (a server without admin keys takes its API keys on /admin).
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, TextIO

from llama_api.scheduling.memory import format_size

DEFAULT_URL = "http://127.0.0.1:8000"


class AdminError(Exception):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.status = status


def key_from_environment() -> str | None:
    key = os.environ.get("LLAMA_API_ADMIN_KEY", "").strip()
    if key:
        return key
    keys = [k.strip() for k in os.environ.get("LLAMA_API_KEYS", "").split(",") if k.strip()]
    return keys[0] if keys else None


def call(url: str, method: str, path: str, key: str | None, body: dict | None = None,
         timeout: float = 600.0) -> dict[str, Any]:
    """One admin request; an error answer or no answer at all raises AdminError."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise AdminError(f"{exc.code}: {message}", status=exc.code) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AdminError(f"cannot reach the server at {url}: {reason}") from None


def model_path(model_id: str, action: str = "") -> str:
    return "/admin/models/" + urllib.parse.quote(model_id, safe="/") + (f"/{action}" if action else "")


def list_models(url: str, key: str | None) -> list[dict[str, Any]]:
    return call(url, "GET", "/admin/models", key)["models"]


def load_model(url: str, model_id: str, key: str | None, pin: bool = False) -> dict[str, Any]:
    return call(url, "POST", model_path(model_id, "load"), key, {"pin": pin})


def unload_model(url: str, model_id: str, key: str | None, force: bool = False) -> dict[str, Any]:
    return call(url, "POST", model_path(model_id, "unload"), key, {"force": force})


def ago(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    seconds = max(0, time.time() - timestamp)
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def ps_table(models: list[dict[str, Any]]) -> str:
    """The models that hold or are getting a worker (and failed loads), one row each."""
    rows = [["MODEL", "STATE", "NODE", "PID", "MEMORY", "SLOTS", "QUEUED", "PINNED", "LAST USED"]]
    for m in models:
        if m["state"] == "unloaded" and not m["pinned"]:
            continue
        state = m["state"]
        if state == "loading" and m.get("progress") and m["progress"].get("fraction") is not None:
            state = f"loading {m['progress']['fraction']:.0%}"
        slots = "-" if m["slots"] is None else f"{m['slots_in_use']}/{m['slots']}"
        rows.append([m["id"], state, m.get("node") or "-", str(m["pid"] or "-"), ("-" if m["rss_bytes"] is None else format_size(m["rss_bytes"])), slots,
                     "-" if m["queued"] is None else str(m["queued"]),
                     "yes" if m["pinned"] else "no", ago(m["last_used"])])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    failed = [f"{m['id']}: {m['error']}" for m in models if m["state"] == "failed"]
    if len(rows) == 1:
        lines.append("(no model loaded)")
    return "\n".join(lines + (["", "failed loads:", *failed] if failed else []))


# -- the commands: print, return the exit status ---------------------------------------

def ps_command(url: str, key: str | None, out: TextIO | None = None) -> int:
    return _run(lambda: print(ps_table(list_models(url, key)), file=out or sys.stdout))


def load_command(url: str, model_id: str, key: str | None, pin: bool = False,
                 out: TextIO | None = None) -> int:
    def load() -> None:
        m = load_model(url, model_id, key, pin=pin)
        pinned = ", pinned" if m["pinned"] else ""
        print(f"{m['id']} loaded in {m['load_seconds']:.1f}s (pid {m['pid']}{pinned})", file=out or sys.stdout)

    return _run(load)


def unload_command(url: str, model_id: str, key: str | None, force: bool = False,
                   out: TextIO | None = None) -> int:
    return _run(lambda: print(f"{unload_model(url, model_id, key, force)['id']} unloaded", file=out or sys.stdout))


def _run(action) -> int:
    try:
        action()
    except AdminError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    return 0
