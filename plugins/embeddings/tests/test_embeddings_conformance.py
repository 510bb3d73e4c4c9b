"""The core's conformance suite, and concurrent requests through a real worker subprocess."""

from __future__ import annotations

import logging
import re

import anyio
import numpy as np
import pytest

from llama_api.contract.records import EmbedRequest, ModelSpec
from llama_api.testing import BackendConformance
from llama_api.testing.conformance import running_worker


class TestMiniLMConformance(BackendConformance):
    generates = False
    embeds = True

    @pytest.fixture
    def model_spec(self, minilm_spec):
        return minilm_spec

    @pytest.fixture
    def bad_model_spec(self, tmp_path):
        folder = tmp_path / "corrupt-encoder"
        folder.mkdir()
        (folder / "config.json").write_text('{"architectures": ["BertModel"]')
        (folder / "model.safetensors").write_bytes(b"not weights")
        return ModelSpec(id="corrupt", backend="transformers", path=str(folder),
                         plugin="embeddings")


class TestTFHubConformance(BackendConformance):
    generates = False
    embeds = True
    tokenizes = False  # the SavedModel tokenizes inside its graph, out of the server's reach

    @pytest.fixture(scope="class")  # one SavedModel: the suite's shared worker loads it once
    @classmethod
    def model_spec(cls, tmp_path_factory):
        tf = pytest.importorskip("tensorflow")
        tmp_path = tmp_path_factory.mktemp("tfhub")

        class Encoder(tf.Module):
            @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
            def __call__(self, texts):
                return tf.one_hot(tf.strings.to_hash_bucket_fast(texts, 8), 8)

        tf.saved_model.save(Encoder(), str(tmp_path / "tiny-use"))
        return ModelSpec(id="tiny-use", backend="tfhub", path=str(tmp_path / "tiny-use"),
                         plugin="embeddings")

    @pytest.fixture
    def bad_model_spec(self, tmp_path):
        pytest.importorskip("tensorflow")
        folder = tmp_path / "corrupt-saved-model"
        folder.mkdir()
        (folder / "saved_model.pb").write_bytes(b"garbage")
        return ModelSpec(id="corrupt", backend="tfhub", path=str(folder), plugin="embeddings")


def test_worker_batches_concurrent_requests_and_answers_each_in_order(minilm_spec, minilm,
                                                                    caplog):
    texts = [f"text {i} about {'rivers' if i % 2 else 'mountains'}" for i in range(24)]
    expected = minilm.embed(EmbedRequest(input=texts)).embeddings
    results = [None] * len(texts)

    async def main():
        async with running_worker(minilm_spec, n_threads=1) as worker:
            assert worker.slots >= 16

            async def one(i):
                results[i] = await worker.embed(EmbedRequest(input=[texts[i]]))

            async with anyio.create_task_group() as group:
                for i in range(len(texts)):
                    group.start_soon(one, i)

    with caplog.at_level(logging.DEBUG, logger="llama_api.workers.child"):  # the worker logs at DEBUG too
        anyio.run(main)
    for i, result in enumerate(results):
        vector = np.frombuffer(result.data, dtype="<f4").reshape(result.count, result.dims)
        assert result.count == 1 and result.dims == 384
        assert float(vector[0] @ expected[i]) > 0.9999
    # The worker shows the size of the batch that computed each request in its debug log.
    batches = [int(m.group(1)) for r in caplog.records
               if (m := re.search(r"computed in a batch of (\d+) rows", r.getMessage()))]
    assert len(batches) == len(texts) and max(batches) > 1
