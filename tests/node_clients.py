"""Running the third-party Node clients of tests/node (Claude Code, Codex, the openai and
@anthropic-ai/sdk packages) against a real server: where they are, a clean environment that
reaches nothing but the loopback, bounded runs that leave no process behind, and a recording
proxy that shows what a client sent."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

NODE_DIR = Path(__file__).parent / "node"
INSTALLED = NODE_DIR / "node_modules" / ".installed"  # the Makefile's stamp after `npm ci`
BIN = NODE_DIR / "node_modules" / ".bin"
FIXTURES = Path(__file__).parent / "fixtures" / "client_requests"
# The echo model a coding agent talks to: room for its prompts (an agent's system prompt has
# thousands of words) and for its long answers.
AGENT = {"max_prompt": 100_000, "default_max_tokens": 50_000}


def require_node_clients() -> str:
    """The path of `node`, once tests/node's packages are installed. Without Node the tests
    skip (the set-up could not install it); with Node but without the packages they skip
    outside `make test` and fail in it, whose set-up installs them."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is missing (no `node` on PATH): install Debian's nodejs and npm "
                    "(make test does, as root) to run the Node client tests")
    if not INSTALLED.exists():
        message = (f"the Node clients are not installed in {NODE_DIR}: run "
                   "`make setup-test` (or `npm ci` there)")
        if os.environ.get("LLAMA_API_STRICT_SKIPS"):
            pytest.fail(message + "; make test's set-up should have", pytrace=False)
        pytest.skip(message)
    return node


def client_env(home: Path, **extra: str) -> dict[str, str]:
    """A clean environment: nothing of the caller's (no API keys, proxies, or settings) but
    PATH; HOME a fresh folder; `extra` on top."""
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
            "LANG": "C.UTF-8", "NO_COLOR": "1", "NO_PROXY": "127.0.0.1,localhost", **extra}


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (f"exit {self.returncode}\n--- stdout ---\n{self.stdout[-4000:]}\n"
                f"--- stderr ---\n{self.stderr[-4000:]}")


def run_client(command: list[str], env: dict[str, str], cwd: Path, timeout: float) -> Finished:
    """Run a client in its own process group with no stdin; at `timeout` seconds, or when it
    ends, anything left in its group is killed."""
    process = subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(process.pid)
        stdout, stderr = process.communicate()
        pytest.fail(f"{command[0]} ran past {timeout}s:\n"
                    f"{Finished(process.returncode, stdout, stderr)}", pytrace=False)
    finally:
        kill_group(process.pid)
    return Finished(process.returncode, stdout, stderr)


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_script(node: str, script: Path, base_url: str, tmp_path: Path,
               timeout: float = 60) -> list[dict]:
    """Run one of tests/node's .mjs scripts with BASE_URL; it prints one JSON object a line."""
    finished = run_client([node, str(script)], client_env(tmp_path / "home", BASE_URL=base_url),
                          NODE_DIR, timeout)
    assert finished.returncode == 0, str(finished)
    return [json.loads(line) for line in finished.stdout.splitlines() if line.startswith("{")]


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: dict | None
    status: int = 0
    answer: bytes = b""


@dataclass
class RecordingProxy:
    """A loopback HTTP proxy in front of the server that keeps every request and answer."""

    upstream: str
    url: str = ""
    requests: list[Recorded] = field(default_factory=list)

    def posts(self, path_start: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST" and r.path.startswith(path_start)]


HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@contextmanager
def recording_proxy(upstream: str):
    proxy = RecordingProxy(upstream)
    target = urlsplit(upstream)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length) if length else b""
            try:
                body = json.loads(data) if data else None
            except ValueError:
                body = None
            record = Recorded(self.command, self.path, dict(self.headers), body)
            proxy.requests.append(record)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
            try:
                connection.request(self.command, self.path, body=data, headers=headers)
                response = connection.getresponse()
                record.status, record.answer = response.status, response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(record.answer)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(record.answer)
            finally:
                connection.close()

        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = forward

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# The coding agents, each with its default settings apart from where the server is, a dummy
# key, the model, and their documented switches for telemetry and update checks.

def claude_command(prompt: str, *flags: str) -> list[str]:
    return [str(BIN / "claude"), "-p", prompt, *flags]


def claude_env(base_url: str, model: str, home: Path) -> dict[str, str]:
    return client_env(home, ANTHROPIC_BASE_URL=base_url, ANTHROPIC_API_KEY="sk-dummy",
                      ANTHROPIC_MODEL=model, DISABLE_TELEMETRY="1", DISABLE_AUTOUPDATER="1",
                      DISABLE_ERROR_REPORTING="1", CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1")


CODEX_CONFIG = """\
model = "{model}"
model_provider = "llama-api"
check_for_update_on_startup = false

[model_providers.llama-api]
name = "llama-api"
base_url = "{base_url}/v1"
wire_api = "responses"
env_key = "LLAMA_API_KEY"

[analytics]
enabled = false

[feedback]
enabled = false

# its plugin marketplace sync looks up api.github.com and chatgpt.com (the request is the same)
[features]
plugins = false
"""


def codex_command(prompt: str) -> list[str]:
    # exec: one turn, no prompts (approval "never"), its default read-only sandbox
    return [str(BIN / "codex"), "exec", "--skip-git-repo-check", prompt]


def codex_env(base_url: str, model: str, home: Path) -> dict[str, str]:
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(CODEX_CONFIG.format(model=model, base_url=base_url))
    return client_env(home, CODEX_HOME=str(codex_home), LLAMA_API_KEY="sk-dummy")
