"""What the core's tests share, written once: echo models and a real server on them, requests
to a server (a real one from `serve`, or the in-process app of the conftest fixtures), a
stream served without HTTP, and reading what comes back (server-sent events, the events the
echo workers record).

Test modules import it as `support` (tests/conftest.py puts this folder on sys.path)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx

from llama_api.testing import serve

# The conversation most tests send: the echo model repeats its words ("tick tock tick ...").
USER = [{"role": "user", "content": "tick tock"}]

# The models of the `models_dir` fixture (and of `echo_server` when it is given none).
ECHO_MODELS = {
    "fast": {},
    "slow": {"delay": 0.05},
    "slower": {"delay": 0.05},
    "wide": {"delay": 0.05, "slots": 2},
    "broken": {"fail_load": "weights are corrupt"},
    "noisy": {"noisy": True},
}


def write_echo_models(folder: Path, models: dict[str, dict] | None = None) -> Path:
    """`folder` holding an echo model per entry of `models` (name -> the options of
    tests/echo_backend; ECHO_MODELS when None): fast, slow (0.05 s/token), two-slot, broken,
    noisy."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, options in (ECHO_MODELS if models is None else models).items():
        (folder / f"{name}.echo").write_text(json.dumps(options))
    return folder


@contextmanager
def echo_server(models_dir: Path, *args: str, models: dict[str, dict] | None = None,
                events: Path | None = None, env: dict | None = None,
                address_space: int | None = None):
    """A real server (`llama_api.testing.serve`) on the echo models of `models_dir`, with the
    echo plugin only. `args`: more `serve` options; `models`: echo models written into
    `models_dir` first; `events`: the file its workers record their events in; `env`: more
    environment; `address_space`: see `serve`. The server carries `models` (its folder) and
    `events` (that file, or None)."""
    if models is not None:
        write_echo_models(models_dir, models)
    environment = {"LLAMA_API_PLUGINS": "echo", **(env or {})}
    if events is not None:
        environment["LLAMA_API_ECHO_EVENTS"] = str(events)
    with serve("--models-dir", str(models_dir), *args, env=environment,
               address_space=address_space) as server:
        server.models, server.events = models_dir, events
        yield server


def base_url(target) -> str:
    """Where `target` answers: a real server's URL, or the in-process app's (a test client)."""
    return str(target.base_url) if isinstance(target, httpx.Client) else target.url


def request(target, method: str, path: str, timeout: float = 60, **kwargs) -> httpx.Response:
    """`method` `path` on `target`: a real server (httpx) or an in-process test client."""
    if isinstance(target, httpx.Client):
        return target.request(method, base_url(target) + path, timeout=timeout, **kwargs)
    return httpx.request(method, base_url(target) + path, timeout=timeout, **kwargs)


def chat(target, model: str, max_tokens: int | None = 10, *, content: str | None = None,
         headers: dict | None = None, timeout: float = 60, **fields) -> httpx.Response:
    """POST /v1/chat/completions for `model` to `target` (a real server or an in-process test
    client): USER's words, or `content` as the user's message; `max_tokens` None leaves it
    out; `fields` join the body."""
    messages = USER if content is None else [{"role": "user", "content": content}]
    body = {"model": model, "messages": messages, **fields}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return request(target, "POST", "/v1/chat/completions", timeout, json=body,
                   headers=headers)


def model_status(target, model: str) -> dict:
    """What GET /admin/models/<model> of `target` says (a 200, or the test fails)."""
    reply = request(target, "GET", f"/admin/models/{model}", timeout=10)
    assert reply.status_code == 200, reply.text
    return reply.json()


def admin_events(server, trigger, until, headers: dict | None = None) -> tuple[list, object]:
    """Subscribe to a real server's /admin/events, run `trigger()` once subscribed, and read
    events until `until(events so far)` is true: (the events, what `trigger` returned). Each
    event's name is its data's `type`."""
    events = []
    with httpx.stream("GET", server.url + "/admin/events", timeout=30,
                      headers=headers) as response:
        assert response.status_code == 200, response.read()
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
                    if until(events):
                        return events, done.result()
    raise AssertionError(f"the event stream ended after {events}")


def read_events(path) -> list[dict]:
    """The events the echo workers recorded in `path`, oldest first; a line still being written
    waits for the next read (tests poll this while workers append)."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text()
    complete = text[:text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def wait_for_start(events_file, model: str, count: int = 1, timeout: float = 15) -> bool:
    """Wait (up to `timeout` s) until `count` generations of `model` have started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(e["event"] == "start" and e["model"] == model
               for e in read_events(events_file)) >= count:
            return True
        time.sleep(0.05)
    return False


def drive(stream) -> list[tuple[float, dict]]:
    """Serve a streaming response (an ASGI app, such as llama_api.api.streaming.EventStream)
    as an ASGI server would, the client staying to the end: each message it sent, with the
    seconds from the start until it was sent."""
    sent = []

    async def receive():
        await anyio.sleep_forever()  # the client stays

    async def send(message):
        sent.append((anyio.current_time(), message))

    async def main():
        started = anyio.current_time()
        await stream.serve({"type": "http"}, receive, send)
        return started

    started = anyio.run(main)
    return [(at - started, message) for at, message in sent]


def body_of(sent: list[tuple[float, dict]]) -> bytes:
    """The body of what `drive` saw sent (every message after the start)."""
    return b"".join(message.get("body", b"") for _, message in sent[1:])


def as_text(body) -> str:
    """A response's body (or the body as str or bytes) as text."""
    if isinstance(body, httpx.Response):
        return body.text
    return body.decode() if isinstance(body, bytes) else body


def sse_blocks(body) -> list[str]:
    """The raw events of a server-sent-events body, keep-alive comments included."""
    return [event for event in as_text(body).split("\n\n") if event]


def sse(body) -> list[tuple[str | None, dict]]:
    """(event name, data) of each event of a server-sent-events body (a response, str or
    bytes); the name is None for an event without one. Comments (keep-alives) and the closing
    `data: [DONE]` are left out; a line that is no `field: value` fails the test."""
    events = []
    for block in sse_blocks(body):
        fields = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            name, separator, value = line.partition(":")
            assert separator, f"not a server-sent-event line: {line!r}"
            fields[name] = value.removeprefix(" ")
        if not fields:
            continue
        assert "data" in fields, f"an event without data: {block!r}"
        if fields["data"] != "[DONE]":
            events.append((fields.get("event"), json.loads(fields["data"])))
    return events
