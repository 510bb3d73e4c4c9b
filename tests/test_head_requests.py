"""HEAD on the routes that probes and clients check (`/`, `/health`, `/ready`, `/v1/models`)
answers as GET does, without a body; load balancers probe with it, Claude Code sends `HEAD /`
before its first request."""

from __future__ import annotations

import httpx
import pytest


@pytest.mark.parametrize("path", ["/", "/health", "/ready", "/v1/models"])
def test_head_answers_like_get_without_a_body(shared_client, path):
    got = shared_client.get(path)
    head = shared_client.head(path)
    assert got.status_code == head.status_code == 200
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.content == b""


def test_head_through_a_real_server_sends_no_body(server):
    # A raw HTTP/1.1 exchange: a body after a HEAD response would break the connection's
    # framing, and the next request on it would read garbage.
    with httpx.Client(base_url=server.url) as client:
        head = client.head("/health")
        assert head.status_code == 200 and head.content == b""
        assert client.get("/health").json()["status"] == "ok"


def test_the_index_names_the_api(shared_client):
    assert shared_client.get("/").json()["api"] == "/v1"
