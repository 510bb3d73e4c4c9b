"""GET /metrics (scraped and parsed with prometheus_client's parser), who may read it, and the
one log line per request. In-process over real echo workers."""

from __future__ import annotations

import json
import logging
import os
import signal

from prometheus_client.parser import text_string_to_metric_families
from support import USER, chat

from llama_api.scheduling.entries import Settings
from llama_api.testing import wait_for

API, ADMIN = {"Authorization": "Bearer api-key"}, {"Authorization": "Bearer admin-key"}


def scrape(client, headers=None) -> dict[str, list]:
    """metric name -> its samples, from the text format."""
    reply = client.get("/metrics", headers=headers or {})
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples, name: str, **labels) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(s.value for s in samples.get(name, [])
               if all(s.labels.get(k) == v for k, v in labels.items()))


def test_requests_tokens_and_latencies_are_counted_by_route_and_model(client):
    plain = chat(client, "fast", 3)
    assert plain.status_code == 200
    streamed = chat(client, "fast", 4, stream=True)
    assert streamed.status_code == 200 and "[DONE]" in streamed.text
    embedded = client.post(client.v1 + "/embeddings", json={"model": "fast", "input": ["a b c"]})
    assert embedded.status_code == 200
    assert client.get(client.v1 + "/models/fast").status_code == 200

    m = scrape(client)
    route = "/v1/chat/completions"
    assert value(m, "llama_api_requests_total", route=route, model="fast", status="200",
                 method="POST") == 2
    assert value(m, "llama_api_requests_total", route="/v1/embeddings", model="fast") == 1
    # The route's template, not the path a client sent.
    assert value(m, "llama_api_requests_total", route="/v1/models/{model_id}") == 1
    usage = plain.json()["usage"]
    assert value(m, "llama_api_prompt_tokens_total", model="fast") == (
        2 * usage["prompt_tokens"] + embedded.json()["usage"]["prompt_tokens"])
    assert value(m, "llama_api_generated_tokens_total", model="fast") == 3 + 4
    assert value(m, "llama_api_request_duration_seconds_count", route=route, model="fast") == 2
    assert value(m, "llama_api_time_to_first_token_seconds_count", model="fast") == 2
    assert value(m, "llama_api_queue_wait_seconds_count", model="fast") == 3
    assert value(m, "llama_api_generation_tokens_per_second_count", model="fast") == 2
    assert value(m, "llama_api_model_loads_total", model="fast", result="ok") == 1
    assert value(m, "llama_api_model_load_seconds_count", model="fast") == 1
    assert value(m, "llama_api_model_loaded", model="fast") == 1
    assert value(m, "llama_api_worker_rss_bytes", model="fast") > 1_000_000
    assert value(m, "llama_api_requests_running", model="fast") == 0
    assert value(m, "llama_api_requests_waiting", model="fast") == 0


def test_a_streamed_chat_counts_the_tokens_its_stream_reports(client):
    # Counted where the routes handle the deltas: without that, a stream's tokens, first
    # token and speed would be missing from /metrics though its answer is fine.
    streamed = chat(client, "fast", 5, stream=True, stream_options={"include_usage": True})
    assert streamed.status_code == 200
    chunks = [json.loads(line[len("data: "):]) for line in streamed.text.splitlines()
              if line.startswith("data: {")]
    usage = next(chunk["usage"] for chunk in chunks if chunk.get("usage"))
    assert usage["completion_tokens"] == 5
    m = scrape(client)
    assert value(m, "llama_api_generated_tokens_total", model="fast") == 5
    assert value(m, "llama_api_prompt_tokens_total", model="fast") == usage["prompt_tokens"] > 0
    assert value(m, "llama_api_time_to_first_token_seconds_count", model="fast") == 1
    assert value(m, "llama_api_generation_tokens_per_second_count", model="fast") == 1


def test_a_request_that_runs_no_generation_is_still_labelled_with_its_model(client):
    reply = client.post("/tokenize", json={"model": "fast", "content": "a b c"})
    assert reply.status_code == 200, reply.text
    m = scrape(client)
    assert value(m, "llama_api_requests_total", route="/tokenize", model="fast",
                 status="200") == 1
    assert value(m, "llama_api_queue_wait_seconds_count", model="fast") == 1
    assert value(m, "llama_api_generated_tokens_total", model="fast") == 0


def test_a_worker_s_info_follows_what_the_backend_says_while_it_serves(client):
    from llama_api.testing import wait_for

    for _ in range(2):
        assert chat(client, "fast", 3).status_code == 200

    def served():
        return client.get(client.v1 + "/models/fast").json()["worker"]["info"]["served"]

    assert wait_for(lambda: served() == 2, timeout=10)
    threads = client.get(client.v1 + "/models/fast").json()["worker"]["info"]["n_threads"]
    assert value(scrape(client), "llama_api_worker_threads", model="fast") == threads >= 1


def test_a_client_string_never_becomes_a_label(client):
    assert chat(client, "made-up-model-xyz", 3).status_code == 404
    reply = client.get("/v1/models/another-made-up-name")
    assert reply.status_code == 404
    text = client.get("/metrics").text
    assert "made-up-model-xyz" not in text and "another-made-up-name" not in text
    m = scrape(client)
    assert value(m, "llama_api_requests_total", route="/v1/chat/completions", status="404",
                 model="") == 1


def test_loads_failures_evictions_unloads_and_crashes(start_app):
    with start_app(scheduling=Settings(max_workers=1)) as client:
        assert chat(client, "broken", 3).status_code == 503
        assert chat(client, "fast", 3).status_code == 200
        assert chat(client, "slow", 3).status_code == 200  # evicts fast
        pid = client.get("/health").json()["workers"]["slow"]
        os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: client.get("/health").json()["loaded"] == [])
        assert chat(client, "fast", 3).status_code == 200
        assert client.post("/admin/models/fast/unload").status_code == 200
        m = scrape(client)
    assert value(m, "llama_api_model_loads_total", model="broken", result="failed") == 1
    assert value(m, "llama_api_model_loads_total", result="ok") == 3
    assert value(m, "llama_api_model_evictions_total", model="fast") == 1
    assert value(m, "llama_api_model_unloads_total", model="fast", reason="evicted") == 1
    assert value(m, "llama_api_model_unloads_total", model="fast", reason="request") == 1
    assert value(m, "llama_api_worker_crashes_total", model="slow") == 1
    assert value(m, "llama_api_requests_total", route="/v1/chat/completions", model="broken",
                 status="503") == 1
    assert value(m, "llama_api_model_loaded") == 0


def test_each_app_counts_only_its_own_requests(start_app):
    with start_app() as first:
        chat(first, "fast", 3)
        with start_app() as second:
            assert value(scrape(second), "llama_api_requests_total",
                         route="/v1/chat/completions") == 0
        assert value(scrape(first), "llama_api_requests_total",
                     route="/v1/chat/completions") == 1


def test_metrics_take_the_admin_key_when_one_is_set_else_the_api_key(start_app):
    with start_app(api_keys=["api-key"], admin_keys=["admin-key"]) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=API).status_code == 403
        scrape(client, ADMIN)
    with start_app(api_keys=["api-key"]) as client:
        assert client.get("/metrics").status_code == 401
        scrape(client, API)
    with start_app(api_keys=["api-key"], admin_keys=["admin-key"], metrics_auth="api") as client:
        scrape(client, API)
        assert client.get("/metrics").status_code == 401
    with start_app(api_keys=["api-key"], admin_keys=["admin-key"], metrics_auth="none") as client:
        scrape(client)


def test_one_log_line_per_request_with_its_numbers_and_no_key(start_app, caplog):
    with (start_app(api_keys=["secret-key-123"]) as client,
          caplog.at_level(logging.INFO, logger="llama_api.requests")):
        reply = client.post(client.v1 + "/chat/completions",
                            headers={"Authorization": "Bearer secret-key-123"},
                            json={"model": "fast", "messages": USER, "max_tokens": 3,
                                  "stream": True})
        assert reply.status_code == 200
        client.get(client.v1 + "/models", headers={"Authorization": "Bearer wrong-key-456"})
        client.get("/health")  # a probe: DEBUG only
    lines = [r for r in caplog.records if r.name == "llama_api.requests"]
    assert [(r.levelno, r.request["route"], r.request["status"]) for r in lines] == [
        (logging.INFO, "/v1/chat/completions", 200), (logging.INFO, "/v1/models", 401)]
    first = lines[0].getMessage()
    assert first.startswith("POST /v1/chat/completions 200 model=fast prompt_tokens=2 "
                            "completion_tokens=3 ttft=")
    assert "total=" in first and lines[0].request["ttft"] > 0
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert "secret-key-123" not in everything and "wrong-key-456" not in everything
