"""Embeddings from GGUF models, in-process: pooling, normalization, usage, token-id input,
generative models with the embedding option, and encoder (BERT) GGUFs."""

from __future__ import annotations

import pytest

from llama_api import errors
from llama_api.contract.records import (
    EmbedRequest,
    LoadContext,
    ModelSpec,
)

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")

import llama_api_llamacpp as plugin

PROMPT = "hello world"


# -- embeddings -------------------------------------------------------------------------

def test_chat_model_does_not_embed(tiny):
    with pytest.raises(errors.NotSupported):
        plugin.embed(model=tiny, request=EmbedRequest(input=["hello"]))


@pytest.fixture(scope="module")
def embedder(tiny_dir):
    path = tiny_dir / "tiny-embed.gguf"
    (spec,) = [s for s in plugin.discover_models(models_dir=tiny_dir) if s.path == str(path)]
    model = plugin.load_model(spec=spec,
                              context=LoadContext(n_threads=1)).model
    yield model
    plugin.unload_model(model=model)


def test_embeddings_are_pooled_normalized_with_exact_usage(embedder):
    import numpy as np

    inputs = ["hello world", "the cat", "hello world"]
    result = plugin.embed(model=embedder, request=EmbedRequest(input=inputs))
    vectors = np.asarray(result.embeddings)
    assert vectors.shape == (3, 64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors[0], vectors[2], atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])
    expected = sum(len(embedder.tokenize(t, add_bos=embedder.add_bos, special=False))
                   for t in inputs)
    assert result.prompt_tokens == expected


def test_embedding_of_token_ids_at_full_width(embedder):
    import numpy as np

    ids = embedder.tokenize("hello world", add_bos=embedder.add_bos, special=False)
    a = plugin.embed(model=embedder, request=EmbedRequest(input=[ids]))
    b = plugin.embed(model=embedder, request=EmbedRequest(input=["hello world"]))
    assert np.allclose(a.embeddings, b.embeddings, atol=1e-5)
    # the backend's vectors are whole: `dimensions` is the HTTP layer's to apply
    c = plugin.embed(model=embedder, request=EmbedRequest(input=["hello"]))
    assert np.asarray(c.embeddings).shape == (1, 64)
    with pytest.raises(errors.BadRequest, match="out of range") as info:
        plugin.embed(model=embedder, request=EmbedRequest(input=[[1, embedder.n_vocab]]))
    assert info.value.param == "input"


def test_generative_model_with_embedding_option(tiny_path, collect):
    import numpy as np

    model = plugin.load_model(
        spec=ModelSpec(id="both", backend="llamacpp", path=str(tiny_path),
                       options={"embedding": True}),
        context=LoadContext(n_threads=1)).model
    try:
        result = plugin.embed(model=model, request=EmbedRequest(input=["a", "b c"]))
        assert np.asarray(result.embeddings).shape == (2, 64)
    finally:
        plugin.unload_model(model=model)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_encoder_gguf_is_an_embedding_model(tmp_path, collect, pooling):
    import numpy as np

    from llama_api_llamacpp.tiny import write_tiny_bert_gguf

    write_tiny_bert_gguf(tmp_path / "bert.gguf", pooling=pooling)
    (spec,) = plugin.discover_models(models_dir=tmp_path)[:1]
    assert spec.meta["kind"] == "embedding" and spec.meta["pooling"] == pooling
    assert spec.options == {"embedding": True}
    model = plugin.load_model(spec=spec,
                              context=LoadContext(n_threads=1)).model
    try:
        texts = ["the cat sat on the mat", "hello world", "the cat sat on the mat"]
        result = plugin.embed(model=model, request=EmbedRequest(input=texts))
        vectors = np.asarray(result.embeddings)
        assert vectors.shape == (3, 32)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        assert np.allclose(vectors[0], vectors[2], atol=1e-5)
        # [CLS] and [SEP] are counted
        assert result.prompt_tokens == (6 + 2) * 2 + (2 + 2)
        with pytest.raises(errors.NotSupported, match="embedding model"):
            collect(model, prompt="hello")
        with pytest.raises(errors.ContextLengthExceeded):
            plugin.embed(model=model, request=EmbedRequest(input=["cat " * 600]))
    finally:
        plugin.unload_model(model=model)
