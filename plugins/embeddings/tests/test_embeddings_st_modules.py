"""sentence-transformers modules beyond mean pooling, against sentence-transformers itself.

Each folder is written by sentence-transformers (`SentenceTransformer(modules=...).save`)
around a tiny random-weight BERT that reads all-MiniLM-L6-v2's tokenizer; our vectors must
equal `SentenceTransformer(folder).encode(...)`.
"""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

import llama_api_embeddings as plugin
from llama_api import errors
from llama_api.contract.records import EmbedRequest, ModelSpec


class Imported:
    """A module imported when a test first uses it, not when pytest collects this file (each
    of the suite's parallel workers collects every file; sentence-transformers takes seconds to
    import). The first name that imports wins; none: the test is skipped."""

    def __init__(self, *names: str):
        self._names = names

    def __getattr__(self, attribute: str):
        for name in self._names[:-1]:
            try:
                return getattr(importlib.import_module(name), attribute)
            except ImportError:
                continue
        return getattr(pytest.importorskip(self._names[-1]), attribute)


st = Imported("sentence_transformers")
torch = Imported("torch")
# sentence-transformers 6 (5 and older: sentence_transformers.models)
st_modules = Imported("sentence_transformers.sentence_transformer.modules",
                      "sentence_transformers.models")

INSTRUCTION = "Represent the sentence for retrieval: "


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, minilm_path):
    """A 2-layer, 32-wide BERT with random weights and MiniLM's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    folder = tmp_path_factory.mktemp("bert") / "tiny-bert"
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def save_st(folder, tiny_bert, *modules, **kwargs):
    """A sentence-transformers folder: the tiny BERT, then `modules`, as ST saves it."""
    encoder = st_modules.Transformer(str(tiny_bert), max_seq_length=64)
    st.SentenceTransformer(modules=[encoder, *modules], device="cpu", **kwargs).save(str(folder))
    return folder


def assert_same_vectors(folder, texts, helpers, **spec_fields):
    model = helpers.load(ModelSpec(id=folder.name, backend="transformers", path=str(folder),
                                   **spec_fields))
    try:
        ours = plugin.embed(model=model, request=EmbedRequest(input=texts)).embeddings
        reference = st.SentenceTransformer(str(folder), device="cpu").encode(texts)
        assert ours.shape == reference.shape
        assert (helpers.cosine(ours, reference) > 0.9999).all(), helpers.cosine(ours, reference)
        return model.info, ours
    finally:
        plugin.unload_model(model=model)


def test_weighted_mean_pooling(tmp_path, tiny_bert, texts, helpers):
    pooling = st_modules.Pooling(32, pooling_mode="weightedmean")
    folder = save_st(tmp_path / "weighted", tiny_bert, pooling)
    info, ours = assert_same_vectors(folder, texts, helpers)
    assert info["pooling"] == "weightedmean"
    # Not mean under another name: plain mean pooling of the same folder differs.
    _, mean = assert_same_vectors(save_st(tmp_path / "mean", tiny_bert,
                                          st_modules.Pooling(32, pooling_mode="mean")),
                                  texts, helpers)
    assert (helpers.cosine(ours, mean) < 0.9999).any()


def test_legacy_weighted_mean_flag(tmp_path, tiny_bert, texts, helpers):
    """Folders written by sentence-transformers < 5 set pooling_mode_weightedmean_tokens."""
    folder = save_st(tmp_path / "legacy", tiny_bert, st_modules.Pooling(32, "weightedmean"))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": False, "pooling_mode_weightedmean_tokens": True,
    }))
    info, _ = assert_same_vectors(folder, texts, helpers)
    assert info["pooling"] == "weightedmean"


def test_several_pooling_modes_are_concatenated(tmp_path, tiny_bert, texts, helpers):
    pooling = st_modules.Pooling(32, pooling_mode=("cls", "mean", "lasttoken"))
    folder = save_st(tmp_path / "concat", tiny_bert, pooling)
    info, ours = assert_same_vectors(folder, texts, helpers)
    assert info["pooling"] == "cls+mean+last" and ours.shape == (len(texts), 96)


@pytest.mark.parametrize("mode", ["mean", "weightedmean", "cls", "max", "lasttoken"])
def test_include_prompt_false_leaves_the_prompt_out(tmp_path, tiny_bert, texts, helpers, mode):
    pooling = st_modules.Pooling(32, pooling_mode=mode, include_prompt=False)
    folder = save_st(tmp_path / f"instructor-{mode}", tiny_bert, pooling,
                     prompts={"query": INSTRUCTION}, default_prompt_name="query")
    info, ours = assert_same_vectors(folder, texts, helpers)
    assert info["prefix"] == INSTRUCTION
    if mode in ("mean", "weightedmean"):
        # The same folder pooling the prompt too gives other vectors.
        config = json.loads((folder / "1_Pooling" / "config.json").read_text())
        (folder / "1_Pooling" / "config.json").write_text(json.dumps({**config,
                                                                      "include_prompt": True}))
        _, with_prompt = assert_same_vectors(folder, texts, helpers)
        assert (helpers.cosine(ours, with_prompt) < 0.9999).all()


def test_include_prompt_false_with_token_id_input(tmp_path, tiny_bert, texts, helpers):
    pooling = st_modules.Pooling(32, pooling_mode="mean", include_prompt=False)
    folder = save_st(tmp_path / "instructor-ids", tiny_bert, pooling,
                     prompts={"query": INSTRUCTION}, default_prompt_name="query")
    model = helpers.load(ModelSpec(id="ids", backend="transformers", path=str(folder)))
    try:
        ids = [model.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        from_ids = plugin.embed(model=model, request=EmbedRequest(input=ids)).embeddings
        from_text = plugin.embed(model=model, request=EmbedRequest(input=texts)).embeddings
        assert (helpers.cosine(from_ids, from_text) > 0.9999).all()
    finally:
        plugin.unload_model(model=model)


def test_dense_then_layer_norm_then_normalize(tmp_path, tiny_bert, texts, helpers):
    torch.manual_seed(1)
    dense = st_modules.Dense(32, 16, activation_function=torch.nn.Tanh())
    layer_norm = st_modules.LayerNorm(16)
    with torch.no_grad():  # a LayerNorm that is not the identity
        layer_norm.norm.weight.uniform_(0.5, 2.0)
        layer_norm.norm.bias.uniform_(-1.0, 1.0)
    folder = save_st(tmp_path / "dense-ln", tiny_bert, st_modules.Pooling(32), dense, layer_norm,
                     st_modules.Normalize())
    info, ours = assert_same_vectors(folder, texts, helpers)
    assert info["dims"] == 16 and info["normalize"] is True
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_layer_norm_alone_and_normalize_option(tmp_path, tiny_bert, texts, helpers):
    layer_norm = st_modules.LayerNorm(32)
    with torch.no_grad():
        layer_norm.norm.weight.uniform_(0.5, 2.0)
    folder = save_st(tmp_path / "ln", tiny_bert, st_modules.Pooling(32), layer_norm)
    info, ours = assert_same_vectors(folder, texts, helpers)
    assert info["normalize"] is False
    # A LayerNorm output has mean 0 and variance 1 before its affine weights: not unit length.
    assert not np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-3)
    model = helpers.load(ModelSpec(id="ln-normalized", backend="transformers", path=str(folder),
                                   options={"normalize": True}))
    try:
        normalized = plugin.embed(model=model, request=EmbedRequest(input=texts)).embeddings
    finally:
        plugin.unload_model(model=model)
    assert np.allclose(normalized, ours / np.linalg.norm(ours, axis=1, keepdims=True), atol=1e-5)


def test_an_unknown_module_is_refused_by_name(tmp_path, tiny_bert, helpers):
    folder = save_st(tmp_path / "dropout", tiny_bert, st_modules.Pooling(32),
                     st_modules.Dropout(0.1))
    modules = json.loads((folder / "modules.json").read_text())
    dropout_type = modules[-1]["type"]
    assert dropout_type.endswith("Dropout")
    with pytest.raises(errors.ModelLoadError) as info:
        helpers.load(ModelSpec(id="dropout", backend="transformers", path=str(folder)))
    assert dropout_type in info.value.message and "dropout" in info.value.message


def test_an_unknown_pooling_mode_is_refused(tmp_path, tiny_bert, helpers):
    folder = save_st(tmp_path / "odd-pooling", tiny_bert, st_modules.Pooling(32))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "embedding_dimension": 32, "pooling_mode": "median"}))
    with pytest.raises(errors.ModelLoadError, match="median"):
        helpers.load(ModelSpec(id="odd", backend="transformers", path=str(folder)))
