"""The tfhub backend on a tiny SavedModel the tests build (TensorFlow is optional)."""

from __future__ import annotations

import hashlib
import shutil
import sys

import numpy as np
import pytest

import llama_api_embeddings as plugin
from llama_api import errors
from llama_api.api.embeddings import rows_of, shortened
from llama_api.contract.records import EmbedRequest, ModelSpec
from llama_api.workers.child import vectors_to_bytes

DIMS = 6


def build_saved_model(folder):
    """A string-batch encoder: a 4-way hash one-hot, the length, and the word count."""
    tf = pytest.importorskip("tensorflow")

    class Encoder(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, texts):
            buckets = tf.one_hot(tf.strings.to_hash_bucket_fast(texts, 4), 4)
            length = tf.cast(tf.strings.length(texts), tf.float32)[:, None]
            words = tf.cast(tf.strings.split(texts).row_lengths(), tf.float32)[:, None]
            return tf.concat([buckets, length, words], axis=1)

    tf.saved_model.save(Encoder(), str(folder))
    return folder


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    return build_saved_model(tmp_path_factory.mktemp("tfhub") / "tiny-use")


@pytest.fixture(scope="module")
def tfhub_model(saved_model, helpers):
    model = helpers.load(ModelSpec(id="tiny-use", backend="tfhub", path=str(saved_model)),
                         n_threads=1)
    yield model
    plugin.unload_model(model=model)


def test_discovered_as_tfhub(saved_model):
    found = {s.id: s for s in plugin.discover_models(models_dir=saved_model.parent)}
    assert found["tiny-use"].backend == "tfhub"


def test_load_embed_unload(tfhub_model):
    assert tfhub_model.info["dims"] == DIMS
    texts = ["hello world", "one two three four", "x"]
    result = plugin.embed(model=tfhub_model, request=EmbedRequest(input=texts))
    assert result.embeddings.dtype == np.float32 and result.embeddings.shape == (3, DIMS)
    assert result.embeddings[:, 4].tolist() == [11.0, 18.0, 1.0]  # lengths, in order
    assert result.embeddings[:, 5].tolist() == [2.0, 4.0, 1.0]
    assert result.prompt_tokens == 2 + 4 + 1  # whitespace-separated words
    assert result.batch_size == 3


def test_dimensions_and_errors(tfhub_model):
    full = plugin.embed(model=tfhub_model, request=EmbedRequest(input=["a b"]))
    assert full.embeddings.shape == (1, DIMS)  # `dimensions` is the HTTP layer's
    data, count, dims = vectors_to_bytes(full.embeddings)
    [row] = shortened(rows_of(data, count, dims), dims, 2)
    assert len(row) == 2 and np.isclose(np.linalg.norm(np.array(row)), 1.0)
    with pytest.raises(errors.BadRequest) as info:
        shortened(rows_of(data, count, dims), dims, DIMS + 1)
    assert info.value.param == "dimensions"
    with pytest.raises(errors.NotSupported):
        plugin.embed(model=tfhub_model, request=EmbedRequest(input=[[1, 2, 3]]))


def test_handle_is_resolved_in_the_tfhub_cache(saved_model, tmp_path, helpers):
    handle = "https://tfhub.dev/google/universal-sentence-encoder/4"
    shutil.copytree(saved_model, tmp_path / hashlib.sha1(handle.encode()).hexdigest())
    model = helpers.load(ModelSpec(id="use", backend="tfhub", path=handle,
                                   options={"cache_dir": str(tmp_path)}), n_threads=1)
    try:
        result = plugin.embed(model=model, request=EmbedRequest(input=["cached model"]))
        assert result.embeddings.shape == (1, DIMS)
    finally:
        plugin.unload_model(model=model)


def test_a_local_folder_loads_without_tensorflow_hub(saved_model, monkeypatch, helpers):
    monkeypatch.setitem(sys.modules, "tensorflow_hub", None)  # an import of it would fail
    model = helpers.load(ModelSpec(id="tiny-use", backend="tfhub", path=str(saved_model)),
                         n_threads=1)
    try:
        result = plugin.embed(model=model, request=EmbedRequest(input=["no hub needed"]))
        assert result.embeddings[:, 5].tolist() == [3.0]
    finally:
        plugin.unload_model(model=model)


def test_downloading_without_tensorflow_hub_says_what_to_install(monkeypatch, tmp_path, helpers):
    pytest.importorskip("tensorflow")
    monkeypatch.setitem(sys.modules, "tensorflow_hub", None)
    spec = ModelSpec(id="use", backend="tfhub", path="https://tfhub.dev/google/nothing/1",
                     options={"cache_dir": str(tmp_path), "allow_download": True})
    with pytest.raises(errors.ModelLoadError) as info:
        helpers.load(spec)
    assert "needs tensorflow_hub: pip install --no-deps tensorflow-hub" in info.value.message


def test_a_handle_missing_from_the_cache_is_a_load_error(tmp_path, helpers):
    pytest.importorskip("tensorflow")
    spec = ModelSpec(id="use", backend="tfhub", path="https://tfhub.dev/google/nothing/1",
                     options={"cache_dir": str(tmp_path)})
    with pytest.raises(errors.ModelLoadError) as info:
        helpers.load(spec)
    assert "allow_download" in info.value.message


def test_without_tensorflow_the_error_says_what_to_install(monkeypatch, tmp_path, helpers):
    # Runs whether or not TensorFlow is installed: hide it.
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    monkeypatch.setitem(sys.modules, "tensorflow_hub", None)
    with pytest.raises(errors.ModelLoadError) as info:
        helpers.load(ModelSpec(id="use", backend="tfhub", path=str(tmp_path)))
    assert "pip install 'llama-api-embeddings[tfhub]'" in info.value.message
