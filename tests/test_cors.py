"""CORS: off by default; --cors-origin lets web pages from those origins call the API with
the headers the OpenAI and Anthropic browser SDKs send."""

from __future__ import annotations

import pytest

from llama_api.cli.main import build_parser

ALLOWED = "http://localhost:3000"
OTHER = "https://elsewhere.example"
KEY = "sk-cors"
# What the SDKs ask for in a preflight (x-stainless-* is the SDKs' own, and changes).
SDK_HEADERS = ["authorization", "content-type", "x-api-key", "anthropic-version",
               "anthropic-dangerous-direct-browser-access", "openai-organization",
               "openai-project", "x-stainless-retry-count", "x-stainless-package-version"]


def preflight(client, origin: str, method: str = "POST", path: str = "/v1/chat/completions"):
    return client.options(path, headers={"Origin": origin, "Access-Control-Request-Method": method,
                                         "Access-Control-Request-Headers": ", ".join(SDK_HEADERS)})


@pytest.fixture
def cors_client(start_app):
    with start_app(cors_origins=[ALLOWED], api_keys=[KEY]) as client:
        yield client


def test_a_preflight_from_an_allowed_origin_allows_the_sdks_headers_without_a_key(cors_client):
    response = preflight(cors_client, ALLOWED)  # browsers send no credentials in a preflight
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == ALLOWED
    allowed = {h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")}
    assert set(SDK_HEADERS) <= allowed
    assert {"GET", "POST", "DELETE"} <= set(response.headers["access-control-allow-methods"]
                                            .replace(" ", "").split(","))
    assert "Origin" in response.headers.get("vary", "")


def test_a_preflight_from_another_origin_or_for_another_method_is_refused(cors_client):
    response = preflight(cors_client, OTHER)
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers
    assert preflight(cors_client, ALLOWED, method="PUT").status_code == 400


def test_real_requests_carry_the_header_for_the_allowed_origin_only(cors_client):
    auth = {"Authorization": f"Bearer {KEY}"}
    response = cors_client.get("/v1/models", headers={"Origin": ALLOWED, **auth})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert "retry-after" in response.headers["access-control-expose-headers"].lower()
    # An error too, so that the page can read why (here: no key).
    refused = cors_client.get("/v1/models", headers={"Origin": ALLOWED})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ALLOWED
    # A streamed answer as well.
    streamed = cors_client.post("/v1/chat/completions", headers={"Origin": ALLOWED, **auth}, json={
        "model": "fast", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
    assert streamed.headers["access-control-allow-origin"] == ALLOWED
    other = cors_client.get("/v1/models", headers={"Origin": OTHER, **auth})
    assert other.status_code == 200
    assert "access-control-allow-origin" not in other.headers


def test_any_origin_with_a_star(start_app):
    with start_app(cors_origins=["*"]) as client:
        assert preflight(client, OTHER).headers["access-control-allow-origin"] == "*"
        response = client.get("/v1/models", headers={"Origin": OTHER})
        assert response.headers["access-control-allow-origin"] == "*"


def test_cors_is_off_by_default(shared_client):
    response = shared_client.get("/v1/models", headers={"Origin": ALLOWED})
    assert response.status_code == 200
    assert not [h for h in response.headers if h.startswith("access-control-")]
    response = preflight(shared_client, ALLOWED)
    assert not [h for h in response.headers if h.startswith("access-control-")]


def test_the_flag_is_repeatable():
    args = build_parser().parse_args(["serve", "--cors-origin", ALLOWED, "--cors-origin", OTHER])
    assert args.cors_origin == [ALLOWED, OTHER]
    assert build_parser().parse_args(["serve"]).cors_origin == []
