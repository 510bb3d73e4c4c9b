"""Bad input gets an OpenAI-shaped error with the right status, never a 500.

Every case runs in-process (Litestar's test client over real echo workers)."""

from __future__ import annotations

import httpx
import pytest
from support import USER

CHAT = "/chat/completions"

BAD_REQUESTS = [
    (CHAT, {"messages": USER}, 400, "model"),
    (CHAT, {"model": "fast"}, 400, "messages"),
    (CHAT, {"model": "fast", "messages": []}, 400, "messages"),
    (CHAT, {"model": "fast", "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
    (CHAT, {"model": "fast", "messages": USER, "max_tokens": "many"}, 400, "max_tokens"),
    (CHAT, {"model": "fast", "messages": USER, "max_tokens": 0}, 400, "max_tokens"),
    (CHAT, {"model": "fast", "messages": USER, "temperature": -1}, 400, "temperature"),
    (CHAT, {"model": "fast", "messages": USER, "top_p": 3}, 400, "top_p"),
    (CHAT, {"model": "fast", "messages": USER, "n": 1000}, 400, "n"),
    (CHAT, {"model": "fast", "messages": USER, "top_logprobs": 3}, 400, "top_logprobs"),
    (CHAT, {"model": "fast", "messages": USER, "response_format": {"type": "xml"}}, 400,
     "response_format.type"),
    (CHAT, {"model": "fast", "messages": USER, "tools": [{"type": "function"}]}, 400,
     "tools[0].function"),
    (CHAT, {"model": "nope", "messages": USER}, 404, "model"),
    ("/completions", {"model": "fast", "prompt": []}, 400, "prompt"),
    ("/completions", {"model": "fast", "prompt": ["a", 1]}, 400, "prompt"),
    ("/completions", {"model": "fast", "prompt": "x", "logprobs": 99}, 400, "logprobs"),
    ("/embeddings", {"model": "fast", "input": []}, 400, "input"),
    ("/embeddings", {"model": "fast", "input": ""}, 400, "input"),
    ("/embeddings", {"model": "fast", "input": ["ok", ""]}, 400, "input"),
    ("/embeddings", {"model": "fast", "input": ["x"] * 5000}, 400, "input"),
    ("/embeddings", {"model": "fast", "input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
    ("/embeddings", {"model": "fast", "input": "x", "dimensions": 0}, 400, "dimensions"),
    # Integers past 64 bits can't cross the worker pipe: a 400, not a 500.
    (CHAT, {"model": "fast", "messages": USER, "max_tokens": 10**20}, 400, None),
    (CHAT, {"model": "fast", "messages": USER, "seed": -2**63 - 1}, 400, None),
    ("/completions", {"model": "fast", "prompt": [1, 2**70]}, 400, None),
    ("/embeddings", {"model": "fast", "input": [[2**70]]}, 400, None),
    (CHAT, {"model": "fast", "messages": USER, "response_format": {"type": "json_schema",
     "json_schema": {"schema": {"type": "integer", "maximum": 10**20}}}}, 400, None),
]


def assert_openai_error(response: httpx.Response, status: int, param=None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param
    return error


@pytest.mark.parametrize("path,body,status,param", BAD_REQUESTS,
                         ids=[f"{p}-{param}-{i}" for i, (p, _, _, param) in enumerate(BAD_REQUESTS)])
def test_bad_input_names_the_field(shared_client, path, body, status, param):
    assert_openai_error(shared_client.post(shared_client.v1 + path, json=body), status, param)


def test_malformed_json_and_unknown_routes(shared_client):
    v1 = shared_client.v1
    assert_openai_error(shared_client.post(v1 + CHAT, content=b"{not json"), 400)
    assert_openai_error(shared_client.post(v1 + CHAT, content=b"[1, 2]"), 400)
    not_utf8 = b'{"model": "fast", "messages": [{"role": "user", "content": "\xff"}]}'
    assert_openai_error(shared_client.post(v1 + CHAT, content=not_utf8), 400)
    assert_openai_error(shared_client.get(v1 + "/nothing-here"), 404)
    assert_openai_error(shared_client.get(v1 + CHAT), 405)


def test_unknown_model_says_which_exist(shared_client):
    error = assert_openai_error(shared_client.post(
        shared_client.v1 + CHAT, json={"model": "gpt-9", "messages": USER}), 404)
    assert "gpt-9" in error["message"] and "fast" in error["message"]


def test_load_failure_is_503_and_the_server_stays_up(shared_client):
    error = assert_openai_error(shared_client.post(
        shared_client.v1 + CHAT, json={"model": "broken", "messages": USER}), 503)
    assert "weights are corrupt" in error["message"]
    assert error["code"] == "model_load_failed"
    ok = shared_client.post(shared_client.v1 + CHAT,
                            json={"model": "fast", "messages": USER, "max_tokens": 2})
    assert ok.status_code == 200


def test_backend_bad_request_is_400_in_a_stream_too(shared_client):
    long_prompt = " ".join(["word"] * 1200)
    body = {"model": "fast", "messages": [{"role": "user", "content": long_prompt}]}
    error = assert_openai_error(shared_client.post(shared_client.v1 + CHAT, json=body), 400)
    assert error["code"] == "context_length_exceeded" and "1200" in error["message"]
    error = assert_openai_error(
        shared_client.post(shared_client.v1 + CHAT, json={**body, "stream": True}), 400)
    assert error["code"] == "context_length_exceeded"


def test_backend_exception_is_503_naming_it_and_the_worker_survives(shared_client):
    body = {"model": "fast", "messages": [{"role": "user", "content": "please RAISE"}]}
    error = assert_openai_error(shared_client.post(shared_client.v1 + CHAT, json=body), 503)
    assert "RuntimeError" in error["message"] and error["code"] == "backend_error"
    pid = shared_client.get("/health").json()["workers"]["fast"]
    ok = shared_client.post(shared_client.v1 + CHAT,
                            json={"model": "fast", "messages": USER, "max_tokens": 2})
    assert ok.status_code == 200 and shared_client.get("/health").json()["workers"]["fast"] == pid


def test_body_too_large_is_413(shared_client):
    body = b'{"model": "fast", "input": "' + b"x" * (11 * 1024 * 1024) + b'"}'
    assert_openai_error(shared_client.post(shared_client.v1 + "/embeddings", content=body), 413)


@pytest.mark.parametrize("api_keys", [["sk-one"], ["sk-one", "sk-two"]])
def test_api_key_protects_every_route_but_health(start_app, api_keys):
    with start_app(api_keys=api_keys) as client:
        assert client.get("/health").status_code == 200
        error = assert_openai_error(client.get(client.v1 + "/models"), 401)
        assert error["code"] == "invalid_api_key"
        assert_openai_error(client.get(client.v1 + "/models",
                                       headers={"Authorization": "Bearer wrong"}), 401)
        assert_openai_error(client.post(client.v1 + CHAT, json={"model": "fast"},
                                        headers={"Authorization": "Basic sk-one"}), 401)
        for key in api_keys:
            ok = client.get(client.v1 + "/models", headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200


def test_without_api_key_everything_is_open(shared_client):
    assert shared_client.get(shared_client.v1 + "/models").status_code == 200
