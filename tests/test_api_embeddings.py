"""POST /v1/embeddings: float and base64 vectors agree, and `dimensions` cuts each vector and
renormalizes it, whichever backend made it (the worker sends full-width vectors, the HTTP
layer cuts them), or is a 400 naming the model's width when it asks for more."""

from __future__ import annotations

import base64
import struct

import pytest

from llama_api import errors
from llama_api.api.embeddings import rows_of, shortened
from llama_api.workers.child import vectors_to_bytes


def test_embeddings_float_and_base64_agree(client, api):
    default = api.embeddings.create(model="fast", input=["hello there", "general"])
    floats = api.embeddings.create(model="fast", input=["hello there", "general"],
                                   encoding_format="float")
    assert [d.index for d in default.data] == [0, 1]
    for a, b in zip(default.data, floats.data):
        assert a.embedding == pytest.approx(b.embedding)
    raw = client.post(client.v1 + "/embeddings", json={
        "model": "fast", "input": "hello there", "encoding_format": "base64"}).json()
    decoded = struct.unpack("<8f", base64.b64decode(raw["data"][0]["embedding"]))
    assert list(decoded) == pytest.approx(floats.data[0].embedding)
    assert floats.usage.prompt_tokens == 3


def test_dimensions_cut_and_renormalize_every_backend_s_vectors_or_name_the_width(client, api):
    full = api.embeddings.create(model="fast", input="hello").data[0].embedding
    short = api.embeddings.create(model="fast", input="hello", dimensions=3).data[0].embedding
    norm = sum(x * x for x in full[:3]) ** 0.5
    assert short == pytest.approx([x / norm for x in full[:3]], rel=1e-5)
    too_wide = client.post(client.v1 + "/embeddings",
                           json={"model": "fast", "input": "hello", "dimensions": 9})
    assert too_wide.status_code == 400
    error = too_wide.json()["error"]
    assert error["param"] == "dimensions" and "8" in error["message"]


def as_served(embeddings, dimensions) -> tuple[int, list[list[float]]]:
    """The vectors a backend returned, through the pipe's bytes and the HTTP layer's cut."""
    data, count, dims = vectors_to_bytes(embeddings)
    assert len(data) == count * dims * 4
    rows = shortened(rows_of(data, count, dims), dims, dimensions)
    return len(rows[0]), [row.tolist() for row in rows]


@pytest.mark.parametrize("as_numpy", [False, True], ids=["lists", "numpy"])
def test_fewer_dimensions_cut_each_vector_and_renormalize_it(as_numpy):
    rows = [[3.0, 4.0, 12.0], [0.0, 0.0, 5.0], [1.0, 1.0, 1.0]]
    embeddings = pytest.importorskip("numpy").array(rows) if as_numpy else rows
    dims, cut = as_served(embeddings, 2)
    assert (len(cut), dims) == (3, 2)
    assert cut[0] == pytest.approx([0.6, 0.8])
    assert cut[1] == [0.0, 0.0]  # a zero vector stays zero, not NaN
    assert cut[2] == pytest.approx([2 ** -0.5, 2 ** -0.5])
    # the model's own width, or none asked: the vectors as the backend made them
    for dimensions in (3, None):
        assert as_served(embeddings, dimensions) == (3, rows)


@pytest.mark.parametrize("as_numpy", [False, True], ids=["lists", "numpy"])
def test_more_dimensions_than_the_model_makes_is_a_400_naming_its_width(as_numpy):
    rows = [[0.5] * 8]
    embeddings = pytest.importorskip("numpy").array(rows) if as_numpy else rows
    with pytest.raises(errors.BadRequest) as info:
        as_served(embeddings, 9)
    assert info.value.param == "dimensions"
    assert "8-dimensional" in info.value.message
