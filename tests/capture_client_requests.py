"""Capture what the coding agents of tests/node send, as request fixtures.

    .venv/bin/python tests/capture_client_requests.py

Runs Claude Code (`claude -p`) and Codex (`codex exec`) as tests/test_clients_coding_agents.py
does, through a recording proxy in front of an echo server, and writes into
tests/fixtures/client_requests/ each agent's first request body and the body of the request
that carries its tool results back, plus index.json (route, status and headers of each).
Rerun it after updating tests/node/package-lock.json."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # node_clients.py and support.py sit beside it
from node_clients import (
    AGENT,
    FIXTURES,
    claude_command,
    claude_env,
    codex_command,
    codex_env,
    recording_proxy,
    run_client,
)
from support import echo_server

HEADERS = ("anthropic-beta", "anthropic-version", "user-agent", "originator",
           "x-codex-beta-features", "content-type")


def capture(folder: Path, name: str, command, env_for, route: str, server) -> list[dict]:
    written = []
    for case, prompt in (("turn", "Say hello, then say pelican ONCE"),
                         ("tools", "CALL your tools, then say pelican ONCE")):
        with recording_proxy(server.url) as proxy:
            home = folder / f"{name}-{case}"
            run_client(command(prompt), env_for(proxy.url, "agent", home / "home"), folder, 120)
        posts = proxy.posts(route)
        chosen = {"turn": posts[:1], "tools": posts[1:2]}[case]
        for record in chosen:
            file = f"{name}_{'first_request' if case == 'turn' else 'tool_results_request'}.json"
            (FIXTURES / file).write_text(json.dumps(record.body, indent=1) + "\n")
            headers = {k.lower(): v for k, v in record.headers.items()
                       if k.lower() in HEADERS}
            written.append({"file": file, "method": record.method, "path": record.path,
                            "status": record.status, "headers": headers})
    return written


def main() -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ.setdefault("XDG_DATA_HOME", str(folder / "data"))
        with echo_server(folder / "models", models={"agent": AGENT}) as server:
            index = (capture(folder, "claude_code", claude_command, claude_env, "/v1/messages",
                             server)
                     + capture(folder, "codex", codex_command, codex_env, "/v1/responses",
                               server))
    (FIXTURES / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    for entry in index:
        print(entry["status"], entry["path"], FIXTURES / entry["file"])


if __name__ == "__main__":
    main()
