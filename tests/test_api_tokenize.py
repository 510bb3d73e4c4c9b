"""POST /tokenize and /detokenize over real echo workers (the app in-process)."""

from __future__ import annotations

import json

import pytest

TEXT = "the quick brown fox"


@pytest.fixture
def models_dir(models_dir):
    """The shared echo models, and one without a tokenizer."""
    (models_dir / "untokenized.echo").write_text(json.dumps({"tokenizer": False}))
    return models_dir


def post(client, path: str, **body):
    return client.post(path, json=body)


def test_tokenize_a_prompt_on_both_paths(shared_client):
    answers = [post(shared_client, path, model="fast", prompt=TEXT)
               for path in ("/tokenize", "/v1/tokenize")]
    assert [a.status_code for a in answers] == [200, 200]
    body = answers[0].json()
    assert answers[1].json() == body
    assert body["count"] == len(body["tokens"]) == 4
    assert all(isinstance(token, int) and token >= 0 for token in body["tokens"])
    assert body["max_model_len"] == 1000
    # llama.cpp's server calls the text `content`.
    assert post(shared_client, "/tokenize", model="fast", content=TEXT).json() == body


def test_with_pieces_pairs_each_id_with_its_text(shared_client):
    plain = post(shared_client, "/tokenize", model="fast", prompt=TEXT).json()
    pieces = post(shared_client, "/tokenize", model="fast", prompt=TEXT, with_pieces=True).json()
    assert pieces["tokens"] == [{"id": token, "piece": word}
                                for token, word in zip(plain["tokens"], TEXT.split())]
    assert pieces["count"] == 4


def test_detokenize_round_trips(shared_client):
    tokens = post(shared_client, "/tokenize", model="fast", prompt=TEXT).json()["tokens"]
    for path in ("/detokenize", "/v1/detokenize"):
        answer = post(shared_client, path, model="fast", tokens=tokens)
        assert answer.status_code == 200
        assert answer.json() == {"prompt": TEXT}
    assert post(shared_client, "/detokenize", model="fast", tokens=[]).json() == {"prompt": ""}


def test_messages_count_as_many_tokens_as_the_chat_request_reads(shared_client):
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "tick tock clock"}]}]
    counted = post(shared_client, "/tokenize", model="fast", messages=messages).json()
    chat = post(shared_client, "/v1/chat/completions", model="fast", messages=messages,
                max_tokens=1).json()
    assert counted["count"] == chat["usage"]["prompt_tokens"] == 5


@pytest.mark.parametrize("body, param", [
    ({"model": "fast"}, "prompt"),
    ({"model": "fast", "prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "prompt"),
    ({"model": "fast", "prompt": "a", "content": "b"}, "prompt"),
    ({"model": "fast", "messages": []}, "messages"),
    ({"model": "fast", "prompt": "a", "tools": [{"type": "function",
                                                 "function": {"name": "f"}}]}, "tools"),
    ({"model": "fast", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages[0].content[0]"),
    ({"model": "fast", "prompt": 5}, "prompt"),
    ({"prompt": "a"}, "model"),
])
def test_bad_tokenize_bodies_are_400s_naming_the_field(shared_client, body, param):
    answer = shared_client.post("/tokenize", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


@pytest.mark.parametrize("tokens", [[-1], [2**31], ["a"], None])
def test_bad_token_ids_are_400s(shared_client, tokens):
    answer = shared_client.post("/detokenize", json={"model": "fast", "tokens": tokens})
    assert answer.status_code == 400
    assert answer.json()["error"]["param"].startswith("tokens")


def test_unknown_model_is_a_404(shared_client):
    answer = post(shared_client, "/tokenize", model="nope", prompt="a")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "model_not_found"


def test_a_model_without_a_tokenizer_is_a_400_naming_it(client):
    for path, body in (("/tokenize", {"prompt": "a"}), ("/detokenize", {"tokens": [1]})):
        answer = client.post(path, json={"model": "untokenized", **body})
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert "untokenized" in error["message"]
        assert error["code"] == "not_supported"


def test_the_routes_are_in_the_schema(shared_client):
    schema = shared_client.get("/schema/openapi.json").json()
    for path in ("/tokenize", "/v1/tokenize", "/detokenize", "/v1/detokenize"):
        assert "post" in schema["paths"][path]
    fields = schema["components"]["schemas"]["TokenizeBody"]["properties"]
    assert {"prompt", "messages", "add_special_tokens", "with_pieces"} <= set(fields)
