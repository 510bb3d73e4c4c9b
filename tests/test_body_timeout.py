"""--body-timeout: a real server (uvicorn) answers 408 in the route's error shape and closes the
connection when a body stops arriving, over a raw socket; a body that keeps coming, and a
request that runs long once its body is whole, are not cut."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
from support import USER, echo_server

TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def body_timeout_server(tmp_path_factory):
    """A server on fast and slow echo models with --body-timeout TIMEOUT_S."""
    models = tmp_path_factory.mktemp("body-timeout")
    with echo_server(models, "--body-timeout", str(TIMEOUT_S),
                     models={"fast": {}, "slow": {"delay": 0.05}}) as running:
        yield running


def connect(server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.settimeout(10)
    return sock


def head(path: str, length: int, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n").encode()


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (10 s at most)."""
    received = b""
    while piece := sock.recv(65536):
        received += piece
    return received


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    top, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = top.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("sent", [b"", b'{"model": "fa'], ids=["nothing", "half"])
def test_a_body_that_stops_arriving_gets_408_and_a_closed_connection(body_timeout_server, sent):
    with connect(body_timeout_server) as sock:
        started = time.monotonic()
        sock.sendall(head("/v1/chat/completions", 1000) + sent)
        raw = read_until_closed(sock)  # returns: the server closed the connection
        waited = time.monotonic() - started
    status, headers, body = parse(raw)
    assert status == 408, raw
    assert headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert error["code"] == "body_timeout" and "--body-timeout" in error["message"]
    assert error["type"] == "invalid_request_error" and error["param"] is None
    assert TIMEOUT_S <= waited < TIMEOUT_S + 3


def test_a_byte_at_a_time_is_cut_at_the_first_long_gap_in_anthropic_shape(body_timeout_server):
    with connect(body_timeout_server) as sock:
        sock.sendall(head("/v1/messages", 500))
        for byte in b'{"mod':  # each byte well within the bound, then nothing
            time.sleep(TIMEOUT_S / 8)
            started = time.monotonic()  # before the last send: the server's wait starts later
            sock.sendall(bytes([byte]))
        raw = read_until_closed(sock)
        waited = time.monotonic() - started
    status, _, body = parse(raw)
    assert status == 408
    answer = json.loads(body)
    assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"
    assert TIMEOUT_S * 0.9 <= waited < TIMEOUT_S + 3


def test_a_body_whose_pieces_keep_coming_is_served_past_the_timeout(body_timeout_server):
    body = json.dumps({"model": "fast", "messages": USER, "max_tokens": 2}).encode()
    size = len(body) // 8 + 1
    pieces = [body[i:i + size] for i in range(0, len(body), size)]  # 8: 2 s in all
    with connect(body_timeout_server) as sock:
        started = time.monotonic()
        # The client's Connection: close makes the server close after its answer.
        sock.sendall(head("/v1/chat/completions", len(body), "Connection: close\r\n"))
        for piece in pieces:  # the whole body takes longer than the bound, no gap does
            time.sleep(TIMEOUT_S * 0.25)  # gaps far enough below the bound for a slow host
            sock.sendall(piece)
        raw = read_until_closed(sock)
    assert time.monotonic() - started > TIMEOUT_S
    status, _, answer = parse(raw)
    assert status == 200, raw
    assert b"chat.completion" in answer


def test_a_request_that_runs_longer_than_the_bound_once_its_body_came_is_not_cut(
        body_timeout_server):
    # 40 tokens at 0.05 s each: 2 s of generation, twice the bound, after the body came.
    answer = httpx.post(body_timeout_server.v1 + "/chat/completions", timeout=30, json={
        "model": "slow", "messages": [{"role": "user", "content": " ".join(["w"] * 40)}],
        "max_tokens": 40, "stream": True})
    assert answer.status_code == 200
    assert answer.text.rstrip().endswith("data: [DONE]")
    assert answer.elapsed.total_seconds() > TIMEOUT_S
