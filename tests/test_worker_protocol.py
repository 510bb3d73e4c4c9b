"""The worker protocol: frames decode the same however the pipe cuts them, a blocking reader
gets every frame until the pipe closes, a load failure is its own message, and worker log lines
keep their level and their line breaks."""

from __future__ import annotations

import os

import msgspec
import pytest

from llama_api.contract.records import Delta, Usage
from llama_api.workers import protocol


def test_frames_split_anywhere_decode_the_same():
    messages = [protocol.Deltas(id=1, deltas=[Delta(text="héllo " * 50)]),
                protocol.Embedded(id=2, data=bytes(range(256)) * 300, count=1, dims=19200),
                protocol.Deltas(id=1, deltas=[Delta(finish_reason="stop", usage=Usage())],
                                done=True)]
    stream = b"".join(protocol.encode(m) for m in messages)
    for chunk_size in (1, 3, 4, 5, 1000, len(stream)):
        reader = protocol.FrameReader()
        bodies = []
        for start in range(0, len(stream), chunk_size):
            bodies += reader.feed(stream[start:start + chunk_size])
        assert [protocol.from_worker_decoder.decode(b) for b in bodies] == messages
    assert len(protocol.FrameReader().feed(stream[:-1])) == 2  # the last one is not whole yet


def test_a_blocking_reader_gets_the_same_frames_until_the_pipe_closes():
    read_fd, write_fd = os.pipe()
    frames = [protocol.encode(protocol.Cancel(id=n)) for n in range(1, 200)]
    os.write(write_fd, b"".join(frames))
    os.close(write_fd)
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        got = [protocol.to_worker_decoder.decode(b) for b in protocol.read_frames(pipe.read, 7)]
    assert got == [protocol.Cancel(id=n) for n in range(1, 200)]


def test_a_load_failure_is_its_own_message_and_answers_no_request():
    body = protocol.encode(protocol.LoadFailed(kind="ModelLoadError", message="corrupt"))[4:]
    message = protocol.from_worker_decoder.decode(body)
    assert message == protocol.LoadFailed(kind="ModelLoadError", message="corrupt")
    assert not hasattr(message, "id")
    with pytest.raises(msgspec.ValidationError):  # a request failure always names its request
        protocol.from_worker_decoder.decode(msgspec.msgpack.encode({"type": "Failed"}))


def test_worker_log_lines_keep_their_level_and_their_lines():
    import logging

    traceback = "request 3 failed\nTraceback (most recent call last):\n  ...\nRuntimeError: x"
    line = protocol.format_log_line(logging.ERROR, traceback)
    assert "\n" not in line
    assert protocol.parse_log_line(line) == (logging.ERROR, traceback)
    assert protocol.parse_log_line("ggml_init: printed by a C library") == \
        (logging.INFO, "ggml_init: printed by a C library")
