"""The transformers backend on all-MiniLM-L6-v2, in-process (hooks called directly)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import llama_api_embeddings as plugin
from llama_api import errors
from llama_api.api.embeddings import rows_of, shortened
from llama_api.contract.records import EmbedRequest, ModelSpec
from llama_api.workers.child import vectors_to_bytes
from llama_api_embeddings import BatchedEmbedResult

LONG = " ".join(["a long text that goes past the model's maximum length"] * 60)


def embed(model, inputs, **fields):
    return plugin.embed(model=model, request=EmbedRequest(input=inputs, **fields))


def test_vectors_equal_sentence_transformers(minilm, st_model, texts, helpers):
    inputs = texts + [LONG]
    result = embed(minilm, inputs)
    assert isinstance(result, BatchedEmbedResult)
    assert result.embeddings.dtype == np.float32 and result.embeddings.shape == (5, 384)
    reference = st_model.encode(inputs)
    assert (helpers.cosine(result.embeddings, reference) > 0.9999).all()
    assert np.allclose(result.embeddings, reference, atol=1e-5)


def test_pooling_and_normalize_come_from_the_sentence_transformers_config(minilm):
    assert minilm.info["pooling"] == "mean" and minilm.info["normalize"] is True
    assert minilm.info["max_length"] == 256 and minilm.info["dims"] == 384
    assert minilm.slots >= 16
    norms = np.linalg.norm(embed(minilm, ["one", "two words"]).embeddings, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5)


def test_other_pooling_configs_match_sentence_transformers(tmp_path, minilm_path, helpers, texts):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    folder = helpers.copy_model(minilm_path, tmp_path / "cls-model")
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 384, "pooling_mode_cls_token": True,
        "pooling_mode_mean_tokens": False,
    }))
    modules = json.loads((folder / "modules.json").read_text())
    (folder / "modules.json").write_text(json.dumps(modules[:2]))  # drop Normalize
    model = helpers.load(ModelSpec(id="cls", backend="transformers", path=str(folder)))
    try:
        assert model.info["pooling"] == "cls" and model.info["normalize"] is False
        result = embed(model, texts)
        reference = sentence_transformers.SentenceTransformer(str(folder), device="cpu").encode(texts)
        assert (helpers.cosine(result.embeddings, reference) > 0.9999).all()
        assert np.allclose(result.embeddings, reference, atol=1e-4)
        assert not np.allclose(np.linalg.norm(result.embeddings, axis=1), 1.0)
    finally:
        plugin.unload_model(model=model)


def test_options_override_pooling_normalize_max_length_and_prefix(minilm_spec, minilm, helpers):
    spec = ModelSpec(id="o", backend="transformers", path=minilm_spec.path, options={
        "pooling": "max", "normalize": False, "max_length": 8, "prefix": "query: ",
        "passage_prefix": "passage: ",
    })
    model = helpers.load(spec)
    try:
        assert model.info["pooling"] == "max" and model.info["normalize"] is False
        result = embed(model, [LONG, "what is a cat", "passage: cats are animals"])
        count = [len(model.tokenizer(t)["input_ids"])
                 for t in ("query: what is a cat", "passage: cats are animals")]
        assert result.prompt_tokens == 8 + sum(count)  # the long text is cut at max_length
        # The prefix is added once; text that already carries a known prefix keeps its own.
        plain = helpers.load(ModelSpec(id="p", backend="transformers", path=minilm_spec.path,
                                       options={"pooling": "max", "normalize": False}))
        try:
            expected = embed(plain, ["query: what is a cat", "passage: cats are animals"])
        finally:
            plugin.unload_model(model=plain)
        assert np.allclose(result.embeddings[1:], expected.embeddings, atol=1e-5)
    finally:
        plugin.unload_model(model=model)


def test_prompt_tokens_are_exact(minilm, texts):
    tokenizer = minilm.tokenizer
    expected = sum(len(tokenizer(t)["input_ids"]) for t in texts)  # with [CLS] and [SEP]
    assert embed(minilm, texts).prompt_tokens == expected
    assert embed(minilm, [LONG]).prompt_tokens == 256  # truncated at max_seq_length


def as_served(vectors, dimensions):
    """The vectors as a client gets them for `dimensions` (the HTTP layer cuts them)."""
    data, count, dims = vectors_to_bytes(vectors)
    return np.array(shortened(rows_of(data, count, dims), dims, dimensions))


def test_dimensions_shorten_and_renormalize(minilm, texts, helpers):
    full = embed(minilm, texts).embeddings
    short = as_served(full, 64)
    assert short.shape == (len(texts), 64)
    assert np.allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)
    assert (helpers.cosine(short, full[:, :64]) > 0.9999).all()
    assert as_served(full, 384).shape == (len(texts), 384)


# dimensions < 1 and the input's own shape (empty, too many items, mixed kinds) are the
# core's to refuse: test_embeddings_server.py checks them through the HTTP edge.
@pytest.mark.parametrize("dimensions", [385, 4096])
def test_bad_dimensions_are_a_400(minilm, dimensions):
    with pytest.raises(errors.BadRequest) as info:
        as_served(embed(minilm, ["hello"]).embeddings, dimensions)
    assert info.value.param == "dimensions"
    assert "384-dimensional" in info.value.message


def test_token_id_input(minilm, texts, helpers):
    tokenizer = minilm.tokenizer
    from_text = embed(minilm, texts)
    bare = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    wrapped = [tokenizer(t)["input_ids"] for t in texts]
    for ids in (bare, wrapped):  # with or without [CLS]/[SEP], the same vectors
        result = embed(minilm, ids)
        assert (helpers.cosine(result.embeddings, from_text.embeddings) > 0.9999).all()
        assert result.prompt_tokens == from_text.prompt_tokens
    long_ids = [1000] * 1000
    assert embed(minilm, [long_ids]).prompt_tokens == 256


def test_token_ids_out_of_range_are_a_400(minilm):
    with pytest.raises(errors.BadRequest) as info:
        embed(minilm, [[101, 10**9]])
    assert info.value.param == "input"


def test_many_inputs_in_one_request(minilm, st_model, helpers):
    inputs = [f"sentence number {i} about {'cats' if i % 2 else 'dogs'}" for i in range(300)]
    result = embed(minilm, inputs)
    assert result.embeddings.shape == (300, 384)
    reference = st_model.encode(inputs[::37])
    assert (helpers.cosine(result.embeddings[::37], reference) > 0.9999).all()


def test_unknown_hf_id_is_a_load_error_without_download(tmp_path, helpers):
    spec = ModelSpec(id="x", backend="transformers", path="nobody/no-such-model",
                     options={"cache_dir": str(tmp_path)})
    with pytest.raises(errors.ModelLoadError) as info:
        helpers.load(spec)
    assert "allow_download" in info.value.message


def test_hf_id_found_in_the_local_cache(tmp_path, minilm_path, helpers, texts, minilm):
    snapshot = tmp_path / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / "abc123"
    helpers.copy_model(minilm_path, snapshot)
    refs = snapshot.parent.parent / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc123")
    spec = ModelSpec(id="cached", backend="transformers",
                     path="sentence-transformers/all-MiniLM-L6-v2",
                     options={"cache_dir": str(tmp_path), "n_threads": 1})
    model = helpers.load(spec)
    try:
        assert model.info["path"] == str(snapshot)
        assert model.info["n_threads"] == 1
        result = embed(model, texts)
        assert np.allclose(result.embeddings, embed(minilm, texts).embeddings, atol=1e-5)
    finally:
        plugin.unload_model(model=model)


def test_corrupt_folder_is_a_load_error_naming_it(tmp_path, helpers):
    folder = tmp_path / "broken-encoder"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    with pytest.raises(errors.ModelLoadError) as info:
        helpers.load(ModelSpec(id="b", backend="transformers", path=str(folder)))
    assert "broken-encoder" in info.value.message


def test_dense_module_and_default_prompt_match_sentence_transformers(
    tmp_path, minilm_path, helpers, texts
):
    """A Dense layer (384 -> 96, tanh) before Normalize, and a default prompt, as in LaBSE/e5."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    folder = helpers.copy_model(minilm_path, tmp_path / "dense-model")
    (folder / "2_Dense").mkdir()
    (folder / "2_Dense" / "config.json").write_text(json.dumps({
        "in_features": 384, "out_features": 96, "bias": True,
        "activation_function": "torch.nn.modules.activation.Tanh",
    }))
    generator = torch.Generator().manual_seed(0)
    save_file({"linear.weight": torch.randn(96, 384, generator=generator) * 0.1,
               "linear.bias": torch.randn(96, generator=generator) * 0.1},
              str(folder / "2_Dense" / "model.safetensors"))
    modules = json.loads((folder / "modules.json").read_text())
    modules = modules[:2] + [
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 3, "name": "3", "path": "3_Normalize",
         "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "config_sentence_transformers.json").write_text(json.dumps({
        "prompts": {"query": "query: ", "passage": "passage: "},
        "default_prompt_name": "query",
    }))
    model = helpers.load(ModelSpec(id="dense", backend="transformers", path=str(folder)))
    try:
        assert model.info["dims"] == 96 and model.info["prefix"] == "query: "
        result = embed(model, texts)
        reference = sentence_transformers.SentenceTransformer(str(folder), device="cpu").encode(texts)
        assert reference.shape == (len(texts), 96)
        assert (helpers.cosine(result.embeddings, reference) > 0.9999).all()
    finally:
        plugin.unload_model(model=model)
