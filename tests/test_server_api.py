"""The OpenAI HTTP API over real worker processes, through httpx and the openai client.

The app runs in-process (Litestar's test client); its workers are real subprocesses."""

from __future__ import annotations

import logging

import httpx


def test_models_lists_every_discovered_model_and_whether_it_is_loaded(client):
    data = client.get(client.v1 + "/models").json()["data"]
    by_id = {m["id"]: m for m in data}
    assert {"fast", "slow", "wide", "broken"} <= set(by_id)
    assert by_id["fast"]["owned_by"] == "echo"
    assert not by_id["fast"]["loaded"]


def test_first_request_loads_the_model_on_demand(client, api):
    assert client.get("/health").json()["loaded"] == []
    reply = api.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "red green blue"}], max_tokens=4)
    assert reply.choices[0].message.content == "red green blue red"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 4 and reply.usage.prompt_tokens == 3
    health = client.get("/health").json()
    assert health["loaded"] == ["fast"]
    card = client.get(client.v1 + "/models/fast").json()
    assert card["loaded"] and card["worker"]["pid"] == health["workers"]["fast"]


def test_openai_client_streams_chat_with_usage(api):
    stream = api.chat.completions.create(
        model="slow", messages=[{"role": "user", "content": "one two three"}], max_tokens=6,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three one two three"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].usage.completion_tokens == 6


def test_completions_with_list_prompt_and_n_give_one_choice_each(api):
    reply = api.completions.create(model="fast", prompt=["a b", "c d e"], n=2, max_tokens=3)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert [c.text for c in reply.choices] == ["a b a", "a b a", "c d e", "c d e"]
    assert reply.usage.prompt_tokens == 2 + 3
    assert reply.usage.completion_tokens == 12


def test_stop_string_ends_the_completion(api):
    reply = api.completions.create(model="fast", prompt="alpha beta gamma", max_tokens=10,
                                   stop=["gam"])
    assert reply.choices[0].text == "alpha beta "
    assert reply.choices[0].finish_reason == "stop"


def test_stop_string_across_tokens_is_never_streamed(api):
    stream = api.completions.create(model="slow", prompt="alpha beta gamma", max_tokens=10,
                                    stop=["a be"], stream=True)
    pieces = [c.choices[0].text for c in stream if c.choices]
    assert "".join(pieces) == "alph"


def test_unknown_fields_are_ignored_and_nulls_count_as_absent(client):
    body = {"model": "fast", "messages": [{"role": "user", "content": "x y"}],
            "max_tokens": None, "temperature": None, "stop": None, "n": None,
            "some_future_field": {"a": 1}, "stream": None}
    reply = client.post(client.v1 + "/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == 16  # the backend's default


def test_openapi_schema_is_served(client):
    schema = client.get("/schema/openapi.json").json()
    assert "/v1/chat/completions" in schema["paths"]


def test_noisy_backend_output_does_not_corrupt_the_channel(client, caplog):
    caplog.set_level(logging.INFO, logger="llama_api.workers.child")
    reply = client.post(client.v1 + "/completions",
                        json={"model": "noisy", "prompt": "p q", "max_tokens": 3})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["text"] == "p q p"
    # What the backend wrote to fd 1 reached the log, as the worker's output, not the pipe.
    worker_lines = [r.getMessage() for r in caplog.records if r.name == "llama_api.workers.child.noisy"]
    assert "noise on stdout while generating" in worker_lines


def test_a_backend_that_yields_nothing_still_ends_each_streamed_choice(api):
    chunks = list(api.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "SILENT please"}], n=2, stream=True))
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        assert [c.finish_reason for c in mine if c.finish_reason] == ["stop"]
    completion = list(api.completions.create(model="fast", prompt="SILENT", stream=True))
    assert [c.choices[0].finish_reason for c in completion] == ["stop"]


def test_fill_in_the_middle_on_a_model_without_fim_tokens_is_a_400_naming_it(client):
    reply = client.post(client.v1 + "/completions",
                        json={"model": "fast", "prompt": "def f(", "suffix": "return x"})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == "suffix" and "fast" in error["message"]
    assert isinstance(reply, httpx.Response)
