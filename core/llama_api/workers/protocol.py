"""The worker protocol: length-prefixed msgpack frames of tagged msgspec structs (no pickle).

Server to worker: Load, Generate, Embed, Tokenize, Detokenize, Rerank, Cancel, ThreadBudget,
Shutdown.
Worker to server: Progress, Loaded or LoadFailed, then Deltas, Embedded, Tokenized,
Detokenized, Reranked, Failed, and InfoChanged when the model's info changed.
Every request message carries an id; the worker's answers carry the same id.

Both ends frame with `encode` and `FrameReader`, which do no I/O: the server feeds the
reader from an async pipe, the worker from a blocking file descriptor (`read_frames`).

Log lines on the worker's stderr start with `LOG_MARK` and the record's level, so the
server re-logs them at that level (`parse_log_line`); other lines (C libraries' prints)
are plain text.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from llama_api.contract.records import (
    Delta,
    EmbedRequest,
    GenerateRequest,
    ModelSpec,
    RerankRequest,
    RerankResult,
    TokenizeRequest,
    TokenizeResult,
)

HEADER = struct.Struct(">I")


class Load(msgspec.Struct, tag=True, kw_only=True):
    spec: ModelSpec
    n_threads: int = 1


class Generate(msgspec.Struct, tag=True, kw_only=True):
    id: int
    request: GenerateRequest


class Embed(msgspec.Struct, tag=True, kw_only=True):
    id: int
    request: EmbedRequest


class Tokenize(msgspec.Struct, tag=True, kw_only=True):
    id: int
    request: TokenizeRequest


class Detokenize(msgspec.Struct, tag=True, kw_only=True):
    id: int
    tokens: list[int]


class Rerank(msgspec.Struct, tag=True, kw_only=True):
    id: int
    request: RerankRequest


class Cancel(msgspec.Struct, tag=True, kw_only=True):
    id: int


class Shutdown(msgspec.Struct, tag=True):
    pass


class ThreadBudget(msgspec.Struct, tag=True, kw_only=True):
    """The cores this worker may compute on now: the server shares them among busy workers."""

    threads: int


class Progress(msgspec.Struct, tag=True, kw_only=True):
    message: str
    fraction: float | None = None


class Loaded(msgspec.Struct, tag=True, kw_only=True):
    slots: int = 1
    info: dict[str, Any] = {}


class InfoChanged(msgspec.Struct, tag=True, kw_only=True):
    """The model's `info` after it changed while serving (the threads it runs with now)."""

    info: dict[str, Any] = {}


class LoadFailed(msgspec.Struct, tag=True, kw_only=True):
    """The model did not load; `kind` is "ModelLoadError" for a failure the backend expected."""

    kind: str = "ModelLoadError"
    message: str = ""


class Deltas(msgspec.Struct, tag=True, kw_only=True, gc=False):
    """Generated pieces, coalesced; `done` marks the request's last frame."""

    id: int
    deltas: list[Delta]
    done: bool = False


class Embedded(msgspec.Struct, tag=True, kw_only=True, gc=False):
    """Vectors as raw little-endian float32 bytes, `count` rows of `dims` floats."""

    id: int
    data: bytes
    count: int
    dims: int
    prompt_tokens: int = 0


class Tokenized(msgspec.Struct, tag=True, kw_only=True):
    id: int
    result: TokenizeResult


class Detokenized(msgspec.Struct, tag=True, kw_only=True):
    id: int
    text: str


class Reranked(msgspec.Struct, tag=True, kw_only=True):
    id: int
    result: RerankResult


class Failed(msgspec.Struct, tag=True, kw_only=True):
    """A request failed; `kind` names a class in `llama_api.errors`."""

    id: int
    kind: str = "LlamaApiError"
    message: str = ""
    param: str | None = None
    code: str | None = None


ToWorker = (Load | Generate | Embed | Tokenize | Detokenize | Rerank | Cancel | Shutdown
            | ThreadBudget)
FromWorker = (Progress | Loaded | InfoChanged | LoadFailed | Deltas | Embedded | Tokenized | Detokenized
              | Reranked | Failed)

_encoder = msgspec.msgpack.Encoder()
to_worker_decoder = msgspec.msgpack.Decoder(ToWorker)
from_worker_decoder = msgspec.msgpack.Decoder(FromWorker)


def encode(message: ToWorker | FromWorker) -> bytes:
    """One frame: a 4-byte big-endian length, then the msgpack body."""
    body = _encoder.encode(message)
    return HEADER.pack(len(body)) + body


class TruncatedFrame(EOFError):
    """The byte stream ended inside a frame (the other side died while writing it)."""


class FrameReader:
    """Splits a byte stream into frame bodies; feed it bytes as they arrive."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def end(self) -> None:
        """The stream ended: raise TruncatedFrame if part of a frame is still held."""
        if self._buffer:
            raise TruncatedFrame(f"the stream ended inside a frame ({len(self._buffer)} "
                                 "bytes of it arrived)")

    def feed(self, data: bytes) -> list[bytes]:
        """The bodies of the frames that `data` completes, in order."""
        self._buffer += data
        bodies = []
        start = 0
        while len(self._buffer) - start >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buffer, start)
            end = start + HEADER.size + length
            if len(self._buffer) < end:
                break
            bodies.append(bytes(self._buffer[start + HEADER.size:end]))
            start = end
        del self._buffer[:start]
        return bodies


def read_frames(read: Callable[[int], bytes], chunk_size: int = 1 << 16) -> Iterator[bytes]:
    """Frame bodies from a blocking `read(n)` (e.g. os.read on a pipe) until it returns b"";
    TruncatedFrame if it ends inside a frame."""
    reader = FrameReader()
    while chunk := read(chunk_size):
        yield from reader.feed(chunk)
    reader.end()


# -- log lines on the worker's stderr -------------------------------------------------

LOG_MARK = "\x1f"  # a control character that printed text does not start with
_NEWLINE = "\x1e"  # stands for a newline inside one record (a traceback), to keep it one line


def format_log_line(levelno: int, text: str) -> str:
    return f"{LOG_MARK}{logging.getLevelName(levelno)} {text.replace(chr(10), _NEWLINE)}"


def parse_log_line(line: str) -> tuple[int, str]:
    """(level, text) of a worker's stderr line; lines that are not log records are INFO."""
    if line.startswith(LOG_MARK):
        name, _, text = line[1:].partition(" ")
        level = logging.getLevelName(name)
        if isinstance(level, int):
            return level, text.replace(_NEWLINE, "\n")
    return logging.INFO, line
