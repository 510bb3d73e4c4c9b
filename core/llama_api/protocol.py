"""The worker protocol: length-prefixed msgpack frames of tagged msgspec structs (no pickle).

Server to worker: Load, Generate, Embed, Cancel, Shutdown.
Worker to server: Progress, Loaded, Deltas, Embedded, Failed.
Every request message carries an id; the worker's answers carry the same id.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from llama_api.types import Delta, EmbedRequest, GenerateRequest, ModelSpec

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


class Cancel(msgspec.Struct, tag=True, kw_only=True):
    id: int


class Shutdown(msgspec.Struct, tag=True):
    pass


class Progress(msgspec.Struct, tag=True, kw_only=True):
    message: str
    fraction: float | None = None


class Loaded(msgspec.Struct, tag=True, kw_only=True):
    slots: int = 1
    info: dict[str, Any] = {}
    pid: int = 0


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
    # Filled in by backends that batch, to make batching visible.
    batch_size: int = 0


class Failed(msgspec.Struct, tag=True, kw_only=True):
    """A request (id) or the load (id 0) failed; `kind` names a class in `llama_api.errors`."""

    id: int = 0
    kind: str = "LlamaApiError"
    message: str = ""
    param: str | None = None
    code: str | None = None


ToWorker = Load | Generate | Embed | Cancel | Shutdown
FromWorker = Progress | Loaded | Deltas | Embedded | Failed

_encoder = msgspec.msgpack.Encoder()


def encode(message: ToWorker | FromWorker) -> bytes:
    """One frame: a 4-byte big-endian length, then the msgpack body."""
    body = _encoder.encode(message)
    return HEADER.pack(len(body)) + body


to_worker_decoder = msgspec.msgpack.Decoder(ToWorker)
from_worker_decoder = msgspec.msgpack.Decoder(FromWorker)
