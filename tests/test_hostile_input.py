"""Hostile input: every answer a clear 4xx in the route's shape, never a 500 or a hang.

Model ids that climb out of the models folder, values that try to reach a header, numbers past
what the types hold, JSON nested 10,000 deep, 10,000 messages, a 10 MB string, bytes that
aren't UTF-8, NULs and lone surrogates, duplicate keys; a client that sends its body a byte at
a time; chat templates that reach for Python internals; which routes answer without a key.
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
from support import USER

CHAT = "/v1/chat/completions"
RESULTS = {"cases": 0, "4xx": 0, "5xx": 0}


@pytest.fixture(scope="module", autouse=True)
def figure_line():
    yield
    print(f"\nHOSTILE: {RESULTS['cases']} cases, {RESULTS['4xx']} refused with 4xx, "
          f"{RESULTS['5xx']} 5xx, 0 lost")


def answered(response: httpx.Response, *allowed: int) -> dict:
    """Check the status is one of `allowed` and an error is OpenAI's shape; the body."""
    RESULTS["cases"] += 1
    if response.status_code >= 500:
        RESULTS["5xx"] += 1
    elif response.status_code >= 400:
        RESULTS["4xx"] += 1
    assert response.status_code in allowed, (response.status_code, response.text[:300])
    body = response.json()
    if response.status_code >= 400:
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body


def post_raw(client, path: str, raw: bytes, **headers) -> httpx.Response:
    return client.post(path, content=raw, headers={"content-type": "application/json", **headers})


# -- model ids and paths --------------------------------------------------------------

TRAVERSALS = ["../../etc/passwd", "/etc/passwd", "..%2F..%2Fetc%2Fpasswd", "fast/../../x",
              "C:\\Windows\\win.ini", "fast\x00.gguf", "~root/.ssh/id_rsa"]


@pytest.mark.parametrize("model", TRAVERSALS)
def test_a_path_as_model_is_an_unknown_model(shared_client, model):
    body = answered(shared_client.post(CHAT, json={"model": model, "messages": USER}), 404)
    assert body["error"]["code"] == "model_not_found"
    assert "root:" not in json.dumps(body)  # nothing of any file


@pytest.mark.parametrize("path", ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd",
                                  "%2e%2e/%2e%2e/etc/passwd", "fast%00", "....//....//etc"])
def test_a_path_in_the_models_route_is_an_unknown_model(shared_client, path):
    response = shared_client.get(f"/v1/models/{path}")
    body = answered(response, 404)
    assert "root:" not in response.text and body["error"]["type"] == "invalid_request_error"


def test_crlf_in_values_never_reaches_a_header(shared_client):
    injected = "fast\r\nX-Injected: yes\r\n\r\n<html>"
    response = shared_client.post(CHAT, json={"model": injected, "messages": USER})
    answered(response, 404)
    assert "x-injected" not in response.headers
    response = shared_client.get("/v1/models/x%0d%0aX-Injected:%20yes")
    answered(response, 404)
    assert "x-injected" not in response.headers
    # In a request header (the in-process client passes it as it is): nothing comes back.
    response = shared_client.get("/v1/models", headers={"x-request-id": "a\r\nX-Injected: yes"})
    assert response.status_code == 200 and "x-injected" not in response.headers


# -- numbers, nesting, sizes ----------------------------------------------------------

HUGE_VALUES = [
    ("max_tokens", 10**400), ("max_tokens", 2**64), ("n", 10**30), ("seed", 2**70),
    ("temperature", 1e400), ("temperature", -1e400), ("top_p", 1e308), ("top_k", -(2**63) - 1),
    ("logit_bias", {str(10**30): 1}), ("logit_bias", {"1": 1e400}),
]


@pytest.mark.parametrize(("field", "value"), HUGE_VALUES, ids=[f"{f}={str(v)[:12]}"
                                                                for f, v in HUGE_VALUES])
def test_numbers_past_their_types_are_refused(shared_client, field, value):
    raw = json.dumps({"model": "fast", "messages": USER, "max_tokens": 2, field: value})
    raw = raw.replace("Infinity", "1e400")  # as a client would write it
    body = answered(post_raw(shared_client, CHAT, raw.encode()), 400)
    assert body["error"]["param"] in (field, None) or field in body["error"]["message"]


def test_json_nested_10000_deep_is_refused(shared_client):
    nested = "[" * 10_000 + "]" * 10_000
    raw = '{"model": "fast", "messages": ' + nested + "}"
    answered(post_raw(shared_client, CHAT, raw.encode()), 400)
    response = post_raw(shared_client, "/v1/messages", raw.encode())  # in Anthropic's shape
    RESULTS["cases"] += 1
    assert response.status_code == 400 and response.json()["type"] == "error"
    assert "nested too deeply" in response.json()["error"]["message"]
    deep_object = '{"a":' * 10_000 + "1" + "}" * 10_000
    raw = ('{"model": "fast", "messages": [{"role": "user", "content": "x", "tool_calls": ['
           + deep_object + "]}]}")
    answered(post_raw(shared_client, CHAT, raw.encode()), 400)


def test_ten_thousand_messages_answer_without_an_error_of_the_server(shared_client):
    messages = [{"role": "user", "content": "w"}] * 10_000
    body = answered(shared_client.post(CHAT, json={"model": "fast", "messages": messages}), 400)
    assert body["error"]["code"] == "context_length_exceeded"


def test_a_10_mb_string_is_refused(shared_client):
    content = "a" * (10 * 1024 * 1024)
    response = shared_client.post(CHAT, json={"model": "fast", "messages": [
        {"role": "user", "content": content}]})
    answered(response, 413, 400)


# -- encodings and odd JSON -----------------------------------------------------------

def test_bytes_that_are_not_utf8_are_refused(shared_client):
    raw = b'{"model": "fast", "messages": [{"role": "user", "content": "\xff\xfe\xc3"}]}'
    body = answered(post_raw(shared_client, CHAT, raw), 400)
    assert "UTF-8" in body["error"]["message"] or "utf-8" in body["error"]["message"].lower()


@pytest.mark.parametrize("content", ["a\u0000b", "\\ud800", "\\udfff tail", "\\ud83d\\ude00"])
def test_nul_and_lone_surrogates_are_served_or_refused(shared_client, content):
    escaped = content.replace("\u0000", "\\u0000")
    raw = ('{"model": "fast", "max_tokens": 2, "messages": [{"role": "user", "content": "'
           + escaped + '"}]}').encode()
    answered(post_raw(shared_client, CHAT, raw), 200, 400)


def test_duplicate_keys_take_one_value(shared_client):
    raw = (b'{"model": "nope", "model": "fast", "max_tokens": 2, "max_tokens": 3,'
           b' "messages": [{"role": "user", "content": "a b"}]}')
    body = answered(post_raw(shared_client, CHAT, raw), 200, 400)
    if "choices" in body:  # the last one counts, as in most JSON parsers
        assert body["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("raw", [b"", b"null", b"[]", b'"x"', b"{", b"{}" * 1000, b"\x00" * 64,
                                 b'{"model": 1e999999}'])
def test_bodies_that_are_not_a_request_are_refused(shared_client, raw):
    answered(post_raw(shared_client, CHAT, raw), 400)


# -- a client that sends its body a byte at a time ------------------------------------

def test_a_slow_body_does_not_block_other_clients(server):
    host, port = server.url.removeprefix("http://").split(":")
    request = {"model": "fast", "messages": USER, "max_tokens": 2}
    # The model loaded first: the bound below is about the slow body, not a worker's start.
    assert httpx.post(server.v1 + "/chat/completions", timeout=30, json=request).status_code == 200
    with socket.create_connection((host, int(port))) as slow:
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        started = time.monotonic()
        # Blocked, it would wait for the 30 s --body-timeout: the 20 s client timeout fails it.
        fast = httpx.post(server.v1 + "/chat/completions", timeout=20, json=request)
        assert fast.status_code == 200 and time.monotonic() - started < 15
        slow.sendall(b'"')  # still there, still sending
    RESULTS["cases"] += 1


def test_a_body_that_stops_arriving_is_ended_by_the_server(start_server):
    with start_server("--body-timeout", "1") as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as slow:
            slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
            slow.settimeout(8)
            try:
                answer = slow.recv(1024)  # an answer, or b"" for a close
            except TimeoutError:
                answer = None
    assert answer is not None, "the connection was still open 8 s after the body stopped"
    assert answer.startswith(b"HTTP/1.1 408")


# -- chat templates are sandboxed -----------------------------------------------------

ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__init__.__globals__ }}",
    "{{ raise_exception.__globals__['__builtins__'] }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ self._TemplateReference__context }}",
    "{% set x = messages.append({'role': 'system'}) %}{{ messages|length }}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_a_template_that_reaches_for_python_internals_fails_to_render(source):
    from llama_api import errors
    from llama_api.text.chat_template import ChatTemplate

    RESULTS["cases"] += 1
    try:
        rendered = ChatTemplate(source).render([{"role": "user", "content": "hi"}])
    except (errors.BadRequest, errors.ModelLoadError) as refused:
        RESULTS["4xx"] += 1
        assert "template" in refused.message
        return
    # Undefined attributes render as nothing in the sandbox: no internals come out.
    assert "class" not in rendered and "function" not in rendered and "uid=" not in rendered
    assert "module" not in rendered and rendered.strip() in ("", "1")


def test_a_gguf_whose_template_reaches_for_internals_answers_400(tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp")
    from litestar.testing import TestClient

    from llama_api.api.app import ServerConfig, create_app
    from llama_api.workers.plugins import Plugins
    from llama_api_llamacpp.tiny import write_tiny_gguf

    evil = "{{ ''.__class__.__mro__[1].__subclasses__()[0].__init__.__globals__ }}"
    write_tiny_gguf(tmp_path / "evil.gguf", chat_template=evil)
    monkeypatch.setenv("LLAMA_API_PLUGINS", "llamacpp")
    app = create_app(ServerConfig(models_dir=tmp_path), Plugins())
    with TestClient(app, timeout=60) as client:
        response = client.post(CHAT, json={"model": "evil", "messages": USER, "max_tokens": 2})
        body = answered(response, 400)
        assert "template" in body["error"]["message"]
        assert "__globals__" not in json.dumps(body).replace(evil, "")


# -- keys -----------------------------------------------------------------------------

# Open on purpose when keys are set: the liveness and readiness probes (orchestrators call
# them without credentials). The schema (/schema) needs a key like the API.
OPEN_ON_PURPOSE = {"/health", "/ready", "/"}  # probes, and what the server is


def test_with_keys_set_only_the_probes_answer_without_one(start_app):
    with start_app(api_keys=["api-secret"], admin_keys=["admin-secret"]) as client:
        assert client.get("/schema/openapi.json").status_code == 401
        schema = client.get("/schema/openapi.json", headers={"authorization": "Bearer api-secret"})
        open_routes, closed = set(), {}
        for path, operations in schema.json()["paths"].items():
            for method in operations:
                concrete = path.replace("{model_id}", "fast").replace("{target}", "fast") \
                    .replace("{response_id}", "resp_x")
                if path == "/admin/events":
                    continue  # a stream without end; its guard is the admin routes' one
                response = client.request(method.upper(), concrete, json={})
                RESULTS["cases"] += 1
                if response.status_code in (401, 403):
                    closed[path] = response.status_code
                    if method != "head":  # a HEAD answer has no body
                        assert response.json()["error"]["message"], response.text  # either API
                else:
                    open_routes.add(path)
        assert open_routes == OPEN_ON_PURPOSE, open_routes
        # Admin routes want the admin key: an API key is refused with 403.
        admin = client.get("/admin/models", headers={"authorization": "Bearer api-secret"})
        assert admin.status_code == 403
        assert client.get("/admin/models", headers={
            "authorization": "Bearer admin-secret"}).status_code == 200
        # An admin key opens the API routes too; a wrong key opens nothing.
        assert client.get("/v1/models", headers={
            "authorization": "Bearer admin-secret"}).status_code == 200
        assert client.get("/v1/models", headers={
            "authorization": "Bearer api-secretX"}).status_code == 401
